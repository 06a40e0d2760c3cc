"""Vocabulary sizes the generations share: which tokenizer a model reads is decided by its vocabulary."""

NEOX_VOCAB = 50277  # GPT-NeoX-20B tokenizer: every RWKV-4 Pile model, the RWKV-7 Pile models, Pythia
BYTE_VOCAB = 257  # 256 bytes + end-of-text (id 0), see loading.tokenizer.ByteTokenizer
WORLD_VOCAB = 65536  # the RWKV World tokenizer: the RWKV-7 World and G1 models
