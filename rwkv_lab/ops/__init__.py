"""Operator packages, one per model generation (as fla lays out its ops): the float64-capable reference beside
the fast forms, behind one signature per operator."""


def triton_available() -> bool:
    """Whether Triton imports: what every operator's 'auto' asks before it picks its Triton kernel on CUDA."""
    try:
        import triton  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True
