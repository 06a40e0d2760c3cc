"""The `rwkv` package's RWKV-7 (RWKV_x070): the independent implementation the tests and benchmarks compare with."""

from __future__ import annotations

import importlib.util
import os
import sys


def rwkv_package_x070(cuda: bool = False):
    """The package's RWKV_x070 class, from a copy of rwkv/model.py of its own.

    rwkv/model.py chooses RWKV-4 or RWKV-7 from RWKV_V7_ON when imported, so a process that also compares with
    its RWKV-4 (tests/test_peers.py) needs the two as separate modules. JIT on (as the package runs by default);
    its CUDA kernel (`wkv7s`, built with nvcc on import: what the package's users run on a GPU) with `cuda`. Load
    a model with `RWKV_x070(model=path_without_.pth, strategy="cpu fp32")` (on a GPU "cuda fp16")."""
    spec = importlib.util.find_spec("rwkv.model")
    if spec is None:
        raise ImportError("the `rwkv` package is not installed (pip install rwkv): it is the RWKV-7 reference")
    saved = {key: os.environ.get(key) for key in ("RWKV_V7_ON", "RWKV_JIT_ON", "RWKV_CUDA_ON")}
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="1" if cuda else "0")
    try:
        module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("rwkv_x070", spec.origin))
        # registered before it runs: TorchScript reads a scripted class's source through its module (the CUDA
        # kernel's autograd Function), and refuses one whose module it cannot find ("is a built-in class")
        sys.modules["rwkv_x070"] = module
        module.__spec__.loader.exec_module(module)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return module.RWKV_x070
