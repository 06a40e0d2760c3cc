import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter (numpy on the CPU). It must be set before the
# kernels are defined, so before anything imports rwkv_lab.ops.rwkv4.triton_kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# The gpu-marked tests (tests/test_gpu.py, `make test-gpu`) need a CUDA device. Without one each is skipped here,
# from this one line, so the run's summary (-ra) reports them all in one line.
NO_GPU = "no CUDA device (torch.cuda.is_available() is False): the gpu tests run with `make test-gpu` on a GPU"


def pytest_runtest_setup(item):
    if "gpu" in item.keywords and not torch.cuda.is_available():
        pytest.skip(NO_GPU)
