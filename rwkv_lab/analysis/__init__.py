"""Analysis: the formulations compared (equivalence), the WKV error study (wkv_error), implicit attention, the
state's dynamics, text features and the channels that track them, and drawing activations on text (render)."""
