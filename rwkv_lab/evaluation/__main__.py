"""lm-eval's own command line, with the rwkv_lab model registered (every lm_eval option passes through)."""

import sys

from lm_eval.__main__ import cli_evaluate

from . import backend  # noqa: F401 - registers --model rwkv_lab

sys.argv[0] = "lm_eval"
cli_evaluate()

import torch.distributed as dist  # noqa: E402 - only needed once the evaluation has run

if dist.is_available() and dist.is_initialized():
    # data-parallel: every process finishes its share before the process group goes; a gloo group left to the
    # interpreter's exit can abort a process ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()
