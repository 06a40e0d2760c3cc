"""RWKV-4: one network, two formulations.

    logits, state = model(tokens, state)      # tokens (B, T): parallel over T (training, prefill)
    logits, state = model.step(token, state)  # token (B,): the RNN form, one token at a time

Both share the weights and the constant-size state, an `RWKV4State` whose tensor `packed` (B, L, 5, C) holds per
layer [att x_{t-1}, a, b, p, ffn x_{t-1}] (the order of the `rwkv` package). Parameter names are the keys of the
released BlinkDL checkpoints, so `model.state_dict()` is a BlinkDL state dict. How the parallel form runs fast
(fused blocks, saved activations, the padded head) is `fast_path.py`'s, chosen by `model.run` (a `RunConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...ops.rwkv4 import COMPILED, P_EMPTY, attention_matrix, compute_dtype, resolve_backend
from ..base import RecurrentLMBase
from ..state import RecurrentState
from .config import RWKVConfig, get_config
from .fast_path import block_with_fused_mixes, fused_block_forward, padded_head
from .layers import ATT_P, STATE_SLOTS, Block


@dataclass
class RWKV4State(RecurrentState):
    """A batch of RWKV-4 states: `packed` (B, L, 5, C), per layer [att x, a, b, p, ffn x] (the `rwkv` package's
    order; the WKV's true sums are a·e^p and b·e^p), float32 (float64 for a float64 model)."""

    packed: torch.Tensor


class RWKV(RecurrentLMBase):
    resolve_backend = staticmethod(resolve_backend)  # ops.rwkv4's
    compiled_backends = COMPILED

    def __init__(self, config: RWKVConfig):
        super().__init__()  # RecurrentLMBase: device, dtype, run configuration, checks, CPU decoding layout
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    @property
    def state_dtype(self) -> torch.dtype:
        """The state accumulates sums: float32, or float64 for a float64 model."""
        return compute_dtype(self.emb.weight)

    def init_state(self, batch: int = 1) -> RWKV4State:
        """The empty state: zero token shifts and sums, p = P_EMPTY."""
        cfg = self.config
        packed = torch.zeros(batch, cfg.n_layer, 5, cfg.n_embd, dtype=self.state_dtype, device=self.device)
        packed[:, :, ATT_P] = P_EMPTY
        return RWKV4State(packed)

    def check_state(self, state: RWKV4State, batch: int) -> None:
        cfg = self.config
        expected = (batch, cfg.n_layer, 5, cfg.n_embd)
        if not isinstance(state, RWKV4State):
            raise TypeError(f"state must be an RWKV4State (from model.init_state); got {type(state).__name__}")
        packed = state.packed
        if tuple(packed.shape) != expected:
            raise ValueError(f"state must have shape (B, L, 5, C) = {expected}; got {tuple(packed.shape)}")
        if packed.dtype != self.state_dtype:
            raise TypeError(f"state must be {self.state_dtype} for a {self.dtype} model; got {packed.dtype}")
        if packed.device != self.device:
            raise ValueError(f"state is on {packed.device} but the model is on {self.device}")
        if not bool(torch.isfinite(packed).all()):
            bad = (~torch.isfinite(packed)).nonzero()[0].tolist()
            raise ValueError(
                f"state holds NaN or infinite values (first at [batch, layer, slot, channel] = {bad}, slot "
                f"{STATE_SLOTS[bad[2]]}); a state from init_state or from this model's outputs is always finite"
            )

    def forward(
        self,
        tokens: torch.Tensor,
        state: RWKV4State | None = None,
        *,
        backend: str | None = None,
        check: bool = True,
        trace: list | None = None,
        padded_vocab: bool = False,
    ):
        """Parallel form: tokens (B, T) -> logits (B, T, V) and the state after the last token.

        `padded_vocab`: where the head is padded (`run.padded_head`, see fast_path.padded_head) the logits keep
        the padding, (B, T, V_pad) with zeros past V, for a loss that reads the first V columns
        (training.loss.lm_loss).

        `trace`, a list, receives one dict per layer of what it computed, for analysis: `att_in` / `ffn_in` the
        time-mix and channel-mix inputs (B, T, C) (LayerNorm outputs, whose last row is the next token-shift
        state), `w`, `u`, `k`, `v`, `wkv_state` what its WKV was given, `out` the block's output (B, T, C).
        """
        hidden, state = self.hidden(tokens, state, backend=backend, check=check, trace=trace)
        if self.uses_padded_head(hidden):
            return padded_head(hidden, self.head.weight, keep_padding=padded_vocab), state  # (B, T, V[_pad])
        return self.head(hidden), state  # (B, T, V)

    def uses_padded_head(self, hidden: torch.Tensor) -> bool:
        """`run.padded_head`; 'auto': when training on CUDA (cuBLAS's unaligned kernels for the odd vocabulary)."""
        if self.run.padded_head == "auto":
            return hidden.is_cuda and torch.is_grad_enabled()
        return self.run.padded_head

    @torch.no_grad()
    def wkv_inputs(self, tokens: torch.Tensor, layer: int, state: RWKV4State | None = None) -> dict:
        """What layer `layer`'s WKV sees for tokens (B, T): {w, u, k, v, wkv_state} (see `forward`'s trace)."""
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in [0, {self.config.n_layer}); got {layer}")
        packed = self.checked_state(tokens, state, check=True).packed
        trace: list = []
        self.run_blocks(self.emb(tokens), packed, self.run.backend, n_blocks=layer + 1, trace=trace)
        return {key: trace[layer][key] for key in ("w", "u", "k", "v", "wkv_state")}

    @torch.no_grad()
    def log_decays(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln of the factor each channel's state is multiplied by at each token, tokens (B, T) -> (B, T, L, C):
        RWKV-4's decays are fixed, -w = -exp(time_decay) at every token, whatever the tokens."""
        self.check_tokens(tokens, ndim=2)
        w = torch.stack([block.att.decay() for block in self.blocks])  # (L, C)
        return (-w).expand(tokens.shape[0], tokens.shape[1], *w.shape)

    @torch.no_grad()
    def implicit_attention(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s WKV as attention, tokens (1, T) from the empty state: (T, T, C), row t, column i: how much
        of channel c's wkv_t is v_i (a causal softmax whose scores depend on the attended token's key and the
        distance only; rows sum to 1)."""
        inputs = self.wkv_inputs(tokens, layer)
        return attention_matrix(inputs["w"], inputs["u"], inputs["k"])[0]

    def blocks_with_state(self, x, state: RWKV4State, backend: str, trace: list | None = None, lengths=None):
        """x (B, T, C) embeddings through every block from `state`: the last block's output and the new state
        (with `lengths` (B,), a right-padded batch: each sequence's state after its own last token)."""
        x, layer_states = self.run_blocks(x, state.packed, backend, trace=trace, lengths=lengths)
        return x, RWKV4State(torch.stack(layer_states, dim=1))

    def run_blocks(
        self,
        x,
        state,
        backend,
        n_blocks: int | None = None,
        trace: list | None = None,
        lengths=None,
        step_kernels: bool = False,
    ):
        """x (B, T, C) and the packed state (B, L, 5, C) through the first `n_blocks` blocks: x (fp16: divided by
        the rescale) and their states. `lengths` (B,): the WKV stops each sequence's state at its own length and
        the token shifts are its last real token (the eager blocks: the fused ones take no lengths).
        `step_kernels`: x is one token (B, C), through each block's `step_kernels` (`step`'s fast path)."""
        rescale = self.run.rescale_every if self.dtype == torch.float16 else 0
        overlap = step_kernels and self.overlaps_launches(x.shape[0])
        fused = not step_kernels and lengths is None and self.uses_fused_blocks(x, backend, trace)
        mix_kernels = not step_kernels and self.uses_inference_mix_kernels(x, backend, trace)
        new_state = []
        for i, block in enumerate(self.blocks[:n_blocks]):
            layer_trace = None
            if trace is not None:
                layer_trace = {}
                trace.append(layer_trace)
            scale = 2 ** (i // rescale) if rescale else 1
            run = self.run
            if step_kernels:
                x, layer_state = block.step_kernels(x, state[:, i], scale, overlap)
            else:
                (x, layer_state), fused = self.fused_or_eager(
                    fused,
                    lambda: fused_block_forward(
                        run.saved_activations, run.activation_memory_budget, run.norm_mix_kernels
                    )(block, x, state[:, i], backend, scale),
                    lambda: (
                        block_with_fused_mixes(block, x, state[:, i], backend, scale, lengths, kernels=True)
                        if mix_kernels
                        else _block_region(block, x, state[:, i], backend, scale, layer_trace, lengths)
                    ),
                )
            new_state.append(layer_state)
            if rescale and (i + 1) % rescale == 0:
                x = x / 2
        return x, new_state

    def step(self, token: torch.Tensor, state: RWKV4State | None = None, *, check: bool = True):
        """RNN form: one token per sequence, token (B,) -> logits (B, V), the state. Its reference is the parallel
        form at T = 1 with the recurrent WKV; on CUDA (`uses_step_kernels`) the blocks run their step kernels
        (`Block.step_kernels`), a few launches a layer."""
        if check:
            self.check_tokens(token, ndim=1)
        if not self.uses_step_kernels(token):
            logits, state = self.forward(token[:, None], state, backend="recurrent", check=check)
            return logits[:, 0], state
        packed = self.checked_state(token[:, None], state, check).packed
        x, layers = self.run_blocks(self.emb(token), packed, backend=None, step_kernels=True)
        # every layer's three pieces in one cat: all fp32, the state's dtype (the kernels run for fp32 / bf16 / fp16
        # models, whose state is fp32), so the cat converts nothing
        new_state = torch.cat([piece for pieces in layers for piece in pieces], dim=1)
        return self.head(self.ln_out(x)), RWKV4State(new_state.view(packed.shape))


@torch.compiler.nested_compile_region
def _block_region(block: Block, *args):
    """A block's call as one compile region: under torch.compile of the whole network (the decoder's step on CUDA)
    the compiler builds a block once per kind (the first, with ln0, and the rest) and reuses it for every layer,
    rather than compiling L copies of the same code; a no-op outside torch.compile. The module is called, not its
    forward, so its hooks run (FSDP's all-gather of the block's parameters is one)."""
    return block(*args)


def official_time_decay(layer: int, n_layer: int, n_embd: int) -> torch.Tensor:
    """RWKV-LM's initial time_decay of a layer, (C,) float64: w = exp(decay) from e^-5 to e^3 across channels."""
    h = torch.arange(n_embd, dtype=torch.float64)
    r0 = layer / (n_layer - 1) if n_layer > 1 else 0.0
    return -5 + 8 * (h / max(n_embd - 1, 1)) ** (0.7 + 1.3 * r0)


def official_time_first(n_embd: int) -> torch.Tensor:
    """RWKV-LM's initial time_first (the current token's bonus u), (C,) float64."""
    h = torch.arange(n_embd, dtype=torch.float64)
    return math.log(0.3) + ((h + 1) % 3 - 1) * 0.5


def init_weights(model: RWKV, seed: int = 0, zero_projections: bool = True, orthogonal_matrices: bool = True) -> RWKV:
    """RWKV-LM's RWKV-4 initialisation (spec: "Official initialisation").

    RWKV-LM zeroes att.key/receptance/output and ffn.receptance/value, which makes an untrained model ignore its
    context. `zero_projections=False` draws them orthogonal instead (gain 1, outputs 0.5), so a random model's
    logits depend on every token through the state, as a trained one's do. `orthogonal_matrices=False` draws
    N(0, gain^2 / fan_in) on the model's device instead of orthogonal matrices on the CPU: the same scale, in
    seconds at billions of parameters (for benchmarks, where only the scale matters).
    """
    cfg = model.config
    L, C = cfg.n_layer, cfg.n_embd
    gen = torch.Generator(device="cpu").manual_seed(seed)
    h = torch.arange(C, dtype=torch.float64)

    def orthogonal(weight: torch.Tensor, gain: float):
        if not orthogonal_matrices:
            weight.normal_(0.0, gain / math.sqrt(weight.shape[1]))
            return
        w = torch.empty(weight.shape, dtype=torch.float32)
        nn.init.orthogonal_(w, gain=gain, generator=gen)
        weight.copy_(w)

    def projection(weight: torch.Tensor, gain: float):
        if zero_projections:
            weight.zero_()
        else:
            orthogonal(weight, gain)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        model.emb.weight.copy_(
            (torch.rand(model.emb.weight.shape, generator=gen) * 2e-4 - 1e-4).to(model.emb.weight.device)
        )
        orthogonal(model.head.weight, 0.5 * math.sqrt(max(1.0, cfg.vocab_size / C)))
        for i, block in enumerate(model.blocks):
            r0 = i / (L - 1) if L > 1 else 0.0
            r1 = 1.0 - i / L
            att, ffn = block.att, block.ffn
            att.time_decay.copy_(official_time_decay(i, L, C))
            att.time_first.copy_(official_time_first(C))
            att.time_mix_k.copy_(((h / C) ** r1).view(1, 1, C))
            att.time_mix_v.copy_(((h / C) ** r1 + 0.3 * r0).view(1, 1, C))
            att.time_mix_r.copy_(((h / C) ** (0.5 * r1)).view(1, 1, C))
            ffn.time_mix_k.copy_(((h / C) ** r1).view(1, 1, C))
            ffn.time_mix_r.copy_(((h / C) ** r1).view(1, 1, C))
            orthogonal(att.value.weight, 1.0)
            orthogonal(ffn.key.weight, math.sqrt(cfg.dim_ffn / C))
            projection(att.key.weight, 1.0)
            projection(att.receptance.weight, 1.0)
            projection(att.output.weight, 0.5)
            projection(ffn.receptance.weight, 1.0)
            projection(ffn.value.weight, 0.5)
    return model


def build_model(
    config: RWKVConfig, seed: int = 0, zero_projections: bool = True, dtype=torch.float32, device="cpu"
) -> RWKV:
    """A freshly initialised RWKV-4 of this config (init on CPU in fp32 so results do not depend on device)."""
    model = init_weights(RWKV(config), seed=seed, zero_projections=zero_projections)
    return model.to(device=device, dtype=dtype)


def build_at_size(size: str, dtype=torch.bfloat16, device="cuda") -> RWKV:
    """A released size ('169M' ... '14B') with random weights of the official scale, built on the device (seconds
    at 7B: no orthogonal draws): for benchmarks, where only shapes and scales matter."""
    with torch.device(device):
        model = RWKV(get_config(size))
    init_weights(model, zero_projections=False, orthogonal_matrices=False)
    return model.to(dtype).eval()
