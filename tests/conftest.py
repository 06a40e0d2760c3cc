import gc
import os

import pytest
import torch
import torch._functorch.config

# Without a GPU the Triton kernels run in Triton's interpreter (numpy on the CPU). It must be set before the
# kernels are defined, so before anything imports rwkv_lab.ops.rwkv4.triton_kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# torch 2.11's AOT-autograd cache segfaulted while pickling the entry of RWKV-7's fused blocks' backward in the whole
# suite (tests/test_rwkv7_fast_path.py's fused-blocks test, after other tests and the notebooks' processes had
# compiled; alone it passes, and it did at d4d1b71 too after test_browser.py alone). The suite runs without that
# cache (inductor's FX-graph cache stays on): a crash of the test process would hide every result after it.
torch._functorch.config.enable_autograd_cache = False


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
