"""lm-eval's own command line, with the rwkv_lab model registered (every lm_eval option passes through)."""

import sys

from lm_eval.__main__ import cli_evaluate

from . import backend  # noqa: F401 - registers --model rwkv_lab

sys.argv[0] = "lm_eval"
cli_evaluate()
