"""Inference: text generation (batched, streamed) through the fast recurrent decoder, with sampling on the device."""

from .decoder import Decoder, decoder_for
from .generation import generate, stream

__all__ = ["Decoder", "decoder_for", "generate", "stream"]
