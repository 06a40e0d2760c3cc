import os

# One CPU thread for torch in the tests and in every process they start (notebook kernels, JupyterLab's, scripts,
# torchrun's workers), set before torch is imported. The tests' ops are small: two threads split none of them
# usefully, and on a loaded 2-core machine their spin-waits make each op wait for a descheduled thread (notebook
# 01's time_formulations on both default models, load average ~4: 125 s with two threads, 14 s with one). An
# OMP_NUM_THREADS set by the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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
