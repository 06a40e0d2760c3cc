"""Operator packages, one per model generation (as fla lays out its ops): the float64-capable reference beside
the fast forms, behind one signature per operator."""
