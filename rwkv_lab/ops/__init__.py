"""Operator packages, one per model generation (`rwkv7/`: the RWKV-7 state update in several forms)."""
