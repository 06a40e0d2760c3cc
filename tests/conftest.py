import gc
import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter (numpy on the CPU). It must be set before the
# kernels are defined, so before anything imports rwkv_lab.ops.rwkv4.triton_kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The tests' compiled graphs (the fused blocks, the compiled step) then run through inductor's C++ code generator,
    # which spent most of each compilation choosing vector tilings (sympy index analysis): scalar loops compile the
    # same graphs in 0.6x the time (tests/test_train.py's saved-activations test: 101 s instead of 165 s). What the
    # tests check, what a graph computes and keeps for its backward, does not depend on it; on a GPU inductor
    # generates Triton, untouched by this setting.
    import torch._inductor.config

    torch._inductor.config.cpp.simdlen = 1


# The gpu-marked tests (tests/test_gpu.py, `make test-gpu`) need a CUDA device. Without one each is skipped here,
# from this one line, so the run's summary (-ra) reports them all in one line.
NO_GPU = "no CUDA device (torch.cuda.is_available() is False): the gpu tests run with `make test-gpu` on a GPU"


def pytest_runtest_setup(item):
    if "gpu" in item.keywords and not torch.cuda.is_available():
        pytest.skip(NO_GPU)


@pytest.fixture(scope="session", autouse=True)
def collected_imports_out_of_gc_reach():
    """What the session holds once the tests are collected (the libraries they import: millions of long-lived
    objects) is frozen out of the cyclic collector's reach, so a full collection scans only what the tests have
    made since. The profiler collects before every measurement (measure.memory.free_memory): 0.2 s a collection
    with test_profiler.py alone, more in the whole suite, and its three sweep tests spent most of their time there.
    What a test makes is collected as before."""
    gc.freeze()
    yield
    gc.unfreeze()
