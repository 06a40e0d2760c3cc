import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter (numpy on the CPU). It must be set before the
# kernels are defined, so before anything imports rwkv_lab.wkv.triton_kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
