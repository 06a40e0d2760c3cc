"""Evaluation: the lm-eval backend `rwkv_lab` (importing this package registers it), its result cache, the
paper's tasks online and offline, and the published tables beside ours.

    python -m rwkv_lab.evaluation --model rwkv_lab --model_args pretrained=... --tasks piqa   # lm-eval's CLI
"""

from .backend import RWKVLM

__all__ = ["RWKVLM"]
