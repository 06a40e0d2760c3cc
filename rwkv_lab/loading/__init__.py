"""Loading: checkpoints in every format (BlinkDL .pth, transformers folders, safetensors, hub ids), tokenizers,
and the embedded default model."""
