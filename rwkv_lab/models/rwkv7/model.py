"""RWKV-7 ("Goose", x070): one network, parallel and recurrent.

    logits, state = model(tokens, state)      # tokens (B, T): parallel over T (training, prefill)
    logits, state = model.step(token, state)  # token (B,): the RNN form, one token at a time

The state is an `RWKV7State`: per layer the two token shifts (the att and ffn LayerNorm outputs of the last
token) and the WKV matrix S (H, N, N) per head, S[value index, key index]. Parameter names and shapes are the keys
of BlinkDL's x070 checkpoints, so `model.state_dict()` is a BlinkDL state dict. The equations are the `rwkv`
package's RWKV_x070 and RWKV-LM's RWKV-v7 (see ../shared/spec/rwkv7.md); tests/test_rwkv7_model.py compares
with the package on the same weights.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...ops import triton_available
from ...ops.lengths import last_positions, padding_mask
from ...ops.norm_mix import norm_shift_mix_stacked
from ...ops.rwkv7 import COMPILED, attention_matrix, resolve_backend, wkv7, wkv7_states, wkv7_step
from ..base import RecurrentLMBase
from ..state import RecurrentState
from .config import RWKV7Config
from .fast_path import fused_block_forward

if triton_available():  # the one-token step's kernels (Triton is optional on a CPU machine)
    from ...ops.gemv import Norm, Projection, grouped_gemv
    from ...ops.rwkv7.step_kernel import time_mix_step

# log w = -e^{-1/2} sigmoid(z): every decay lies in (exp(-e^{-1/2}), 1) ~ (0.545, 1). (The package writes the
# constant 0.606531 in its one-token path; RWKV-LM's kernels take -softplus(-z) - 1/2 and exponentiate twice,
# which is this value exactly.)
DECAY_SCALE = math.exp(-0.5)
# ln_x's eps: RWKV-LM fixes 64e-5 for x070 ("notice eps value"), the package too; fla writes head_dim * 1e-5,
# the same at N = 64
LN_X_EPS = 64e-5
ATT, FFN = 0, 1  # the token shifts in RWKV7State.shift


def token_shift(x: torch.Tensor, last_x: torch.Tensor) -> torch.Tensor:
    """The previous token's x for each position: x (B, T, C), last_x (B, C) the one before the first -> (B, T, C)."""
    last = last_x[:, None].to(x.dtype)
    return last if x.shape[1] == 1 else torch.cat([last, x[:, :-1]], dim=1)


@dataclass
class RWKV7State(RecurrentState):
    """shift (B, L, 2, C): [att x, ffn x] of the last token per layer; wkv (B, L, H, N, N): S per layer and head.
    Both in the model's state dtype (float32, float64 for a float64 model)."""

    shift: torch.Tensor
    wkv: torch.Tensor


class TimeMix7(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        C, H, N = config.n_embd, config.n_head, config.head_size
        # a bool, not the layer's index: torch.compile specialises on a module's int attributes, and the index
        # would give each layer of the fused blocks a compilation of its own
        self.first = layer_id == 0
        self.n_head, self.head_size = H, N
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.empty(1, 1, C)))
        for name, width in (
            ("w", config.decay_lora),
            ("a", config.iclr_lora),
            ("v", config.value_lora),
            ("g", config.gate_lora),
        ):
            setattr(self, f"{name}1", nn.Parameter(torch.empty(C, width)))
            setattr(self, f"{name}2", nn.Parameter(torch.empty(width, C)))
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    # its own parameters that the one-token step reads, in `_block_one`'s order (see Block7.step_tensors)
    STEP_PARAMS = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2", "v0", "v1", "v2")
    STEP_PARAMS += ("g1", "g2", "k_k", "k_a", "r_k")

    def mixes(self) -> tuple[nn.Parameter, ...]:
        return self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g

    def kernel_params(self):
        """What prefill_kernels.py's launches read besides the activations (a TimeMixParams)."""
        from ...ops.rwkv7.prefill_kernels import TimeMixParams  # noqa: PLC0415 - Triton is optional on a CPU machine

        return TimeMixParams(
            self.w0, self.a0, self.v0, self.k_k, self.k_a, self.r_k, self.ln_x.weight, self.ln_x.bias,
            DECAY_SCALE, self.ln_x.eps,
        )  # fmt: skip

    def forward(self, x, last_x, v_first, wkv_state, backend: str, trace: dict | None = None, lengths=None):
        """x (B, T, C): ln1's output; last_x (B, C); v_first (B, T, C) from layer 0 (None in layer 0); wkv_state
        (B, H, N, N); lengths (B,) or None: a right-padded batch. Returns the output (B, T, C), v_first and the
        new S (with lengths, each sequence's S after its own last token)."""
        delta = token_shift(x, last_x) - x
        # the six mixes as one op: (6, B, T, C)
        mixed = torch.addcmul(x, delta, torch.stack(self.mixes()))
        return self.from_mixed(mixed, v_first, wkv_state, backend, trace, lengths)

    def from_mixed(
        self, mixed, v_first, wkv_state, backend: str, trace: dict | None = None, lengths=None, kernels=False
    ):
        """The half after its six mixes, mixed (6, B, T, C) in `mixes()`'s order: what `forward` returns.
        `kernels` (inference, no trace): the elementwise work around the operator in prefill_kernels.py's two
        launches, the code below being their reference."""
        _, B, T, C = mixed.shape
        H, N = self.n_head, self.head_size
        xr, xw, xk, xv, xa, xg = mixed.unbind(0)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        if kernels:
            from ...ops.rwkv7.prefill_kernels import time_mix_inputs, time_mix_output  # noqa: PLC0415 - as above

            params = self.kernel_params()
            z_v = None if self.first else (xv @ self.v1) @ self.v2
            z_w, z_a = torch.tanh(xw @ self.w1) @ self.w2, (xa @ self.a1) @ self.a2
            log_w, k, v_mixed, a, b = time_mix_inputs(k, v, z_w, z_a, z_v, v_first, params, lengths)
            v_first = v if self.first else v_first
            heads = lambda t: t.view(B, T, H, N)  # noqa: E731
            y, wkv_state = wkv7(*map(heads, (r, log_w, k, v_mixed, a, b)), wkv_state, backend=backend, check=False)
            return self.output(time_mix_output(y, r, k, v_mixed, g, params)), v_first, wkv_state
        z = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        log_w = -DECAY_SCALE * torch.sigmoid(z.to(wkv_state.dtype))  # (B, T, C), fp32 at least
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate, in (0, 1)
        if self.first:
            v_first = v
        else:  # value residual: mix towards layer 0's value
            v = torch.lerp(
                v, v_first, torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2).to(v.dtype)
            )  # autocast: bf16 v
        kappa = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1)  # removal key, unit norm per head
        k = k * (1 + (iclr - 1) * self.k_a)  # replacement key
        heads = lambda t: t.view(B, T, H, N)  # noqa: E731
        r, log_w, k, v, iclr = heads(r), heads(log_w), heads(k), heads(v), heads(iclr)
        a, b = -kappa, kappa * iclr
        if trace is not None:
            trace.update(r=r, log_w=log_w, k=k, v=v, kappa=kappa, iclr=iclr, a=a, b=b, wkv_state=wkv_state)
        if lengths is None:
            y, wkv_state = wkv7(r, log_w, k, v, a, b, wkv_state, backend=backend, check=False)  # (B, T, H, N)
        else:
            # S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T is S_{t-1} exactly where w = 1 (log_w = 0), a = 0
            # and k = 0: padded positions leave each sequence's S as its last real token left it
            pad = padding_mask(lengths, T)[:, :, None, None]  # (B, T, 1, 1)
            held = [torch.where(pad, 0.0, t) for t in (log_w, k, a)]
            y, wkv_state = wkv7(r, held[0], held[1], v, held[2], b, wkv_state, backend=backend, check=False)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, H, N)
        # the current token's own value, weighted per head by r . (k * r_k): RWKV-7's "bonus"
        y = y + (r * k * self.r_k).sum(dim=-1, keepdim=True) * v
        return self.output(y.view(B, T, C) * g), v_first, wkv_state


class ChannelMix7(nn.Module):
    def __init__(self, config: RWKV7Config):
        super().__init__()
        C = config.n_embd
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, config.dim_ffn, bias=False)
        self.value = nn.Linear(config.dim_ffn, C, bias=False)

    def forward(self, x, last_x):
        return self.from_mixed(torch.addcmul(x, token_shift(x, last_x) - x, self.x_k))

    def from_mixed(self, xk, kernels=False):
        """`kernels` (inference): the key's relu and square in one pass over it (ops/pointwise.py; the code here its
        reference)."""
        if kernels:
            from ...ops.pointwise import relu_square_  # noqa: PLC0415 - Triton is optional on a CPU machine

            return self.value(relu_square_(self.key(xk)))
        k = torch.square(torch.relu(self.key(xk)))  # (B, T, F)
        return self.value(k)


class Block7(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        # the first block normalises the embeddings
        self.ln0 = nn.LayerNorm(C, eps=eps) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix7(config, layer_id)
        self.ffn = ChannelMix7(config)

    def step_tensors(self) -> list[torch.Tensor]:
        """What the one-token step (`_block_one`) reads, in its order. Read from the modules' parameter dicts:
        nn.Module's attribute lookup, a Python fallback, costs about ten times as much (0.3-0.9 ms a token at 12
        layers on 2 busy cores, some 2% of the step)."""
        modules = self._modules
        time_mix, channel_mix = modules["att"], modules["ffn"]
        att, ffn = time_mix._modules, channel_mix._modules
        norms = [w for m in (modules["ln1"], modules["ln2"]) for w in (m._parameters["weight"], m._parameters["bias"])]
        mixes = [time_mix._parameters[name] for name in TimeMix7.STEP_PARAMS]
        projections = [att[name]._parameters["weight"] for name in ("receptance", "key", "value", "output")]
        ln_x = att["ln_x"]._parameters
        channel = [channel_mix._parameters["x_k"], ffn["key"]._parameters["weight"], ffn["value"]._parameters["weight"]]
        return norms + mixes + projections + [ln_x["weight"], ln_x["bias"]] + channel

    def forward(self, x, v_first, shift, wkv_state, backend: str, trace: dict | None = None, lengths=None):
        # shift (B, 2, C), wkv_state (B, H, N, N) of this layer; returns x, v_first and the new ones; `lengths`
        # (B,): a right-padded batch, each state taken after its own last token
        if self.ln0 is not None:
            x = self.ln0(x)
        h = self.ln1(x)
        att, v_first, wkv_state = self.att(h, shift[:, ATT], v_first, wkv_state, backend, trace, lengths)
        x = x + att
        h2 = self.ln2(x)
        x = x + self.ffn(h2, shift[:, FFN])
        if trace is not None:
            trace.update(att_in=h, ffn_in=h2, out=x)
        shifts = torch.stack([last_positions(h, lengths), last_positions(h2, lengths)], dim=1)
        return x, v_first, shifts.to(shift.dtype), wkv_state

    def forward_with_mix_kernels(self, x, v_first, shift, wkv_state, backend: str, lengths=None):
        """`forward` for inference (no autograd) with each half's LayerNorm, token shift and mixes in one launch
        (norm_mix's stacked kernel: the time mix's six, the channel mix's one) in place of a dozen elementwise ones;
        the blocks of a prefill on CUDA (RecurrentLMBase.uses_inference_mix_kernels). RWKV-7 mixes
        x + (x_prev - x) mu, the kernel x mu' + x_prev (1 - mu'): mu' = 1 - mu, in fp32. `lengths` (B,): a
        right-padded batch, whose token shifts are each sequence's LayerNorm output at its own last token (the
        kernel gives the last position's: the few rows are normalised again). The time mix's elementwise work
        around its operator runs in ops/rwkv7/prefill_kernels.py's two launches (`TimeMix7.from_mixed`'s
        `kernels`), the channel mix's squared ReLU in one (ops/pointwise.py)."""
        if self.ln0 is not None:
            x = self.ln0(x)
        complement = lambda mixes: [1 - m.float() for m in mixes]  # noqa: E731
        mixed, h_last = norm_shift_mix_stacked(x, self.ln1, shift[:, ATT], complement(self.att.mixes()))  # (6, B, T, C)
        if lengths is not None:
            h_last = self.ln1(last_positions(x, lengths))
        out, v_first, wkv_state = self.att.from_mixed(mixed, v_first, wkv_state, backend, None, lengths, kernels=True)
        x = x + out
        mixed, h2_last = norm_shift_mix_stacked(x, self.ln2, shift[:, FFN], complement([self.ffn.x_k]))  # (1, B, T, C)
        if lengths is not None:
            h2_last = self.ln2(last_positions(x, lengths))
        x = x + self.ffn.from_mixed(mixed[0], kernels=True)
        return x, v_first, torch.stack([h_last, h2_last], dim=1).to(shift.dtype), wkv_state


class RWKV7(RecurrentLMBase):
    resolve_backend = staticmethod(resolve_backend)  # ops.rwkv7's
    compiled_backends = COMPILED

    def __init__(self, config: RWKV7Config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block7(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # how the parallel form runs is `self.run` (RecurrentLMBase): its `backend` is rwkv_lab.ops.rwkv7's ('auto'
        # picks the fastest exact one), its `fused_blocks` whether the blocks run compiled (fast_path.py), its
        # `saved_activations` and `activation_memory_budget` what those keep for the backward

    @property
    def state_dtype(self) -> torch.dtype:
        """S accumulates over the whole sequence: float32, or float64 for a float64 model."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def init_state(self, batch: int = 1) -> RWKV7State:
        """The empty state: zero token shifts and zero S."""
        cfg = self.config
        kwargs = {"dtype": self.state_dtype, "device": self.device}
        return RWKV7State(
            shift=torch.zeros(batch, cfg.n_layer, 2, cfg.n_embd, **kwargs),
            wkv=torch.zeros(batch, cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size, **kwargs),
        )

    def check_state(self, state: RWKV7State, batch: int) -> None:
        cfg = self.config
        if not isinstance(state, RWKV7State):
            raise TypeError(f"state must be an RWKV7State (from model.init_state); got {type(state).__name__}")
        expected = {
            "shift": (batch, cfg.n_layer, 2, cfg.n_embd),
            "wkv": (batch, cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size),
        }
        for name, shape in expected.items():
            tensor = getattr(state, name)
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"state.{name} must have shape {shape} for a batch of {batch}; got {got}")
            if tensor.dtype != self.state_dtype:
                raise TypeError(f"state.{name} must be {self.state_dtype} for a {self.dtype} model; got {tensor.dtype}")
            if tensor.device != self.device:
                raise ValueError(f"state.{name} is on {tensor.device} but the model is on {self.device}")
            if not bool(torch.isfinite(tensor).all()):
                bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
                raise ValueError(
                    f"state.{name} holds NaN or infinite values (first at {bad}); a state from init_state or from "
                    "this model's outputs is always finite"
                )

    def blocks_with_state(self, x, state: RWKV7State, backend: str, trace: list | None = None, lengths=None):
        """x (B, T, C) embeddings through every block: the last block's output and the new state (with `lengths`
        (B,), a right-padded batch: each sequence's state after its own last token). The blocks run compiled
        where `uses_fused_blocks` says (fast_path.py), else eager (with a trace or lengths always eager): in an
        inference pass with the LayerNorms, shifts and mixes in kernels where `uses_inference_mix_kernels` says."""
        backend = self.resolve_backend(backend, x)
        fused = lengths is None and self.uses_fused_blocks(x, backend, trace)
        mix_kernels = self.uses_inference_mix_kernels(x, backend, trace)
        saved = (self.run.saved_activations, self.run.activation_memory_budget)
        if backend not in COMPILED:
            # "matmuls" checkpoints the block as one graph, which the other forms of the operator, run outside it,
            # break: dynamo would then run the checkpoint eagerly, uncompiled. Their pieces keep what the
            # partitioner chooses
            saved = ("partitioner", 1.0) if saved[0] == "matmuls" else saved
        v_first = None
        shifts, wkvs = [], []
        for i, block in enumerate(self.blocks):
            layer_trace = None
            if trace is not None:
                layer_trace = {}
                trace.append(layer_trace)
            inputs = (x, v_first, state.shift[:, i], state.wkv[:, i], backend)
            (x, v_first, shift, wkv_state), fused = self.fused_or_eager(
                fused,
                lambda: fused_block_forward(*saved)(block, *inputs),
                lambda: (
                    block.forward_with_mix_kernels(*inputs, lengths)
                    if mix_kernels
                    else block(*inputs, layer_trace, lengths)
                ),
            )
            shifts.append(shift)
            wkvs.append(wkv_state)
        return x, RWKV7State(shift=torch.stack(shifts, dim=1), wkv=torch.stack(wkvs, dim=1))

    def forward(
        self,
        tokens: torch.Tensor,
        state: RWKV7State | None = None,
        *,
        backend: str | None = None,
        check: bool = True,
        trace: list | None = None,
        padded_vocab: bool = False,
    ):
        """Parallel form: tokens (B, T) -> logits (B, T, V) and the state after the last token. (`padded_vocab`,
        the protocol's request for a padded head's logits, changes nothing: RWKV-7 has no padded head, its released
        vocabularies, 50304 and 65536, being aligned already.)

        `trace`, a list, receives one dict per layer of what it computed, for analysis: `att_in` / `ffn_in` the
        time-mix and channel-mix inputs (B, T, C) (LayerNorm outputs, whose last row is the next token-shift
        state), `out` the block's output (B, T, C), and what its WKV was given, each (B, T, H, N): `r`, `log_w`,
        `k` (the replacement key), `v` (after the value residual), `kappa` (the removal key), `iclr` (the
        in-context learning rate), `a` = -kappa, `b` = kappa * iclr, and `wkv_state` (B, H, N, N) it started from.
        """
        hidden, state = self.hidden(tokens, state, backend=backend, check=check, trace=trace)
        return self.head(hidden), state  # (B, T, V)

    @torch.no_grad()
    def wkv_inputs(
        self, tokens: torch.Tensor, layer: int, state: RWKV7State | None = None, *, states: bool = False
    ) -> dict:
        """What layer `layer`'s state update sees for tokens (B, T): {r, log_w, k, v, kappa, iclr, a, b, wkv_state}
        (see `forward`'s trace), running the blocks up to that layer only; with `states`, also `states` (B, T, H, N,
        N): its matrix S (value index, key index) after every token, in the state dtype, the reference recurrence
        over these inputs (T H N^2 numbers per sequence: one layer at a time, for analysis)."""
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in [0, {self.config.n_layer}); got {layer}")
        state = self.checked_state(tokens, state, check=True)
        x, v_first = self.emb(tokens), None
        for i, block in enumerate(self.blocks[: layer + 1]):
            trace: dict = {}
            x, v_first, _, _ = block(x, v_first, state.shift[:, i], state.wkv[:, i], self.run.backend, trace)
        keys = ("r", "log_w", "k", "v", "kappa", "iclr", "a", "b", "wkv_state")
        inputs = {key: trace[key] for key in keys}
        if states:
            t = inputs
            S = wkv7_states(t["r"], t["log_w"], t["k"], t["v"], t["a"], t["b"], t["wkv_state"])
            inputs["states"] = S.to(self.state_dtype)
        return inputs

    def wkv_states(self, tokens: torch.Tensor, layer: int, state: RWKV7State | None = None) -> torch.Tensor:
        """Layer `layer`'s matrix state after every token of tokens (B, T): (B, T, H, N, N) (see wkv_inputs)."""
        return self.wkv_inputs(tokens, layer, state, states=True)["states"]

    @torch.no_grad()
    def log_decays(self, tokens: torch.Tensor, state: RWKV7State | None = None) -> torch.Tensor:
        """ln of the factor each channel's state is multiplied by at each token, tokens (B, T) -> (B, T, L, C):
        RWKV-7's decays depend on the token (log_w = -e^{-1/2} sigmoid(z_t), in (-0.607, 0))."""
        trace: list = []
        self.hidden(tokens, state, trace=trace)
        return torch.stack([t["log_w"].flatten(2) for t in trace], dim=2)

    @torch.no_grad()
    def implicit_attention(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s state update as attention, tokens (1, T) from the empty state: (T, T, H), row t, column
        i: alpha with head h's y_t = sum_i alpha[t, i, h] v_i (RWKV-7's implicit attention: the key of token i
        carried through the transitions of i+1..t and read by r_t; unnormalised and signed)."""
        t = self.wkv_inputs(tokens, layer)
        return attention_matrix(t["r"], t["log_w"], t["k"], t["a"], t["b"])[0].permute(1, 2, 0)  # (T, T, H)

    def step(self, token: torch.Tensor, state: RWKV7State | None = None, *, check: bool = True):
        """RNN form: one token per sequence, token (B,) -> logits (B, V) and the state.

        The fast path of decoding: the blocks' equations for one token on (B, C) vectors, functional, without the
        parallel form's token shifts and reshapes, all blocks one TorchScript call (`_blocks_one`); `forward` is
        its reference (tests/test_rwkv7_model.py compares them in float64, gradients included). Without autograd
        each layer writes its S straight into the new state. Under torch.compile the same blocks run as Python,
        which the compiler traces and fuses; it cannot trace a TorchScript call. On CUDA without autograd the blocks
        run their Triton kernels instead (`_blocks_one_kernels`; tests/test_step_kernels.py)."""
        if check:
            self.check_tokens(token, ndim=1)
        if state is None:
            state = self.init_state(token.shape[0])
        elif check:
            self.check_state(state, token.shape[0])
        x = _layer_norm(self.blocks[0].ln0, self.emb(token))  # (B, C)
        B, C = x.shape
        params = [block.step_tensors() for block in self.blocks]
        wkv = None
        if self.uses_step_kernels(x):  # on CUDA: a few Triton launches a layer (RecurrentLMBase.uses_step_kernels)
            # the token shifts in the state's fp32: the kernels read them as they are (no rounding, no copy)
            eps, overlap = self.config.layer_norm_eps, self.overlaps_launches(B)
            x, shifts, wkvs = _blocks_one_kernels(x, state.shift, state.wkv, params, eps, overlap)
        else:
            # out= ops take no autograd (nor does the compiler trace them into a strided slice): then each layer
            # returns a fresh S and they are stacked
            compiling = torch.compiler.is_compiling()
            wkv = None if torch.is_grad_enabled() or compiling else torch.empty_like(state.wkv)  # (B, L, H, N, N)
            last = state.shift.to(x.dtype)  # the token shifts in the model's dtype (a no-op but for bf16 / fp16)
            blocks = _blocks_one if compiling else _blocks_one_scripted()
            x, shifts, wkvs = blocks(
                x,
                list(last.unbind(1)),
                list(state.wkv.unbind(1)),
                [None] * len(self.blocks) if wkv is None else list(wkv.unbind(1)),
                params,
                self.config.layer_norm_eps,
                LN_X_EPS,
                DECAY_SCALE,
            )
        x = _layer_norm(self.ln_out, x)
        shift = torch.stack(shifts, dim=1).view(B, -1, 2, C).to(self.state_dtype)
        return self.head(x), RWKV7State(shift=shift, wkv=torch.stack(wkvs, dim=1) if wkv is None else wkv)


def _layer_norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)


def _block_one(
    x: Tensor,
    v_first: Tensor | None,
    last: Tensor,
    S: Tensor,
    S_out: Tensor | None,
    p: list[Tensor],
    ln_eps: float,
    ln_x_eps: float,
    decay_scale: float,
):
    """`Block7.forward` for one token after ln0 (TorchScript compiles it within `_blocks_one`): x and v_first (B, C)
    (v_first None in the first layer, which sets it), last the layer's token shifts (B, 2, C); S (B, H, N, N) and
    S_out (B, H, N, N) or None, where S' goes; p the block's `step_tensors()`. Returns x, the layer's own value v
    before the value residual (the first layer's is v_first), the two new token shifts (B, C) each, S': every
    output a new tensor and no two inputs views of one, as a compile region needs. The LoRAs' biases fold into
    addmm; the projections are F.linear of the weights as stored (transposed on the CPU: see
    store_projections_transposed)."""
    ln1_w, ln1_b, ln2_w, ln2_b, x_r, x_w, x_k, x_v, x_a, x_g, w0, w1, w2, a0, a1, a2, v0, v1, v2, g1, g2 = p[:21]
    k_k, k_a, r_k, W_r, W_k, W_v, W_o, ln_x_w, ln_x_b, ffn_x_k, ffn_W_k, ffn_W_v = p[21:]
    B, C = x.shape
    H, N = r_k.shape
    last_att, last_ffn = last[:, 0], last[:, 1]  # ATT, FFN (TorchScript reads no module constants)
    h = F.layer_norm(x, [C], ln1_w, ln1_b, ln_eps)
    # the six mixes as one op: (6, B, C)
    xr, xw, xk, xv, xa, xg = torch.addcmul(h, last_att - h, torch.cat([x_r, x_w, x_k, x_v, x_a, x_g])).unbind(0)
    r = F.linear(xr, W_r)
    k = F.linear(xk, W_k)
    v = F.linear(xv, W_v)
    z = torch.addmm(w0[0], torch.tanh(xw @ w1), w2)
    w = torch.exp(torch.sigmoid(z.to(S.dtype)) * -decay_scale)  # exp(log_w), in S's dtype
    iclr = torch.sigmoid(torch.addmm(a0[0], xa @ a1, a2))
    g = torch.sigmoid(xg @ g1) @ g2
    v_own = v
    if v_first is not None:
        v = torch.lerp(v, v_first, torch.sigmoid(torch.addmm(v0[0], xv @ v1, v2)))
    kappa = F.normalize((k * k_k[0]).view(B, H, N), dim=-1)
    k = k * (1 + (iclr - 1) * k_a[0])
    r, k, v, iclr = r.view(B, H, N), k.view(B, H, N), v.view(B, H, N), iclr.view(B, H, N)
    sd = S.dtype
    y, S = wkv7_step(S, r.to(sd), w.view(B, H, N), k.to(sd), v.to(sd), (-kappa).to(sd), (kappa * iclr).to(sd), S_out)
    y = F.group_norm(y.to(x.dtype).view(B, C), H, ln_x_w, ln_x_b, ln_x_eps).view(B, H, N)
    # the current token's own value, weighted per head by r . (k * r_k): RWKV-7's "bonus"
    y = torch.addcmul(y, (r * k * r_k).sum(dim=-1, keepdim=True), v)
    x = x + F.linear(y.view(B, C) * g, W_o)
    h2 = F.layer_norm(x, [C], ln2_w, ln2_b, ln_eps)
    hidden = torch.square(torch.relu(F.linear(torch.addcmul(h2, last_ffn - h2, ffn_x_k[0]), ffn_W_k)))
    return x + F.linear(hidden, ffn_W_v), v_own, h, h2, S


def _blocks_one(
    x: Tensor,
    last: list[Tensor],
    wkv_in: list[Tensor],
    wkv_out: list[Tensor | None],
    params: list[list[Tensor]],
    ln_eps: float,
    ln_x_eps: float,
    decay_scale: float,
):
    """Every block for one token (`_block_one` per layer), x (B, C) after ln0; per layer its token shifts (B, 2, C),
    S and where S' goes (or None), and its `step_tensors()`. Returns x, the new token shifts [att, ffn] per layer (2L of
    (B, C)) and the L new S.

    Scripted, the loop is one TorchScript call (the CPU). Under torch.compile (the decoder on CUDA) each layer is
    one compile region (`_block_one_region`): the compiler builds the first layer and one other, and reuses the
    latter for every layer after it, rather than compiling L copies of the same code."""
    v_first: Tensor | None = None  # layer 0 sets it
    shifts: list[Tensor] = []
    wkvs: list[Tensor] = []
    for i in range(len(params)):
        args = (x, v_first, last[i], wkv_in[i], wkv_out[i], params[i])
        if torch.jit.is_scripting():
            x, v, h, h2, S = _block_one(*args, ln_eps, ln_x_eps, decay_scale)
        else:
            x, v, h, h2, S = _block_one_region(*args, ln_eps, ln_x_eps, decay_scale)
        if v_first is None:
            v_first = v
        shifts += [h, h2]
        wkvs.append(S)
    return x, shifts, wkvs


def _block_one_kernels(
    x: Tensor, v_first: Tensor | None, last: Tensor, S: Tensor, p: list[Tensor], ln_eps: float, overlap: bool = False
):
    """`_block_one` in six Triton launches (the decode step's fast path on CUDA): x and v_first (B, C), last (B, 2,
    C), S (B, H, N, N) fp32, p the block's `step_tensors()`. Returns what `_block_one` does, the token shifts in fp32.

    1. ops/gemv.py: the LayerNorm, then every projection of the time mix's input, r, k, v and the four LoRAs' first
       matrices, in one launch, each with its token-shift mix in the prologue;
    2. the LoRAs' second matrices in one, their activations (tanh, sigmoid) in the prologue;
    3. ops/rwkv7/step_kernel.py: everything between those and the output projection, one program per head;
    4. the output projection, adding the residual; 5-6. the channel mix's two matrices, its LayerNorm and mix in
       the first's prologue and relu^2 in its epilogue, the residual in the second's.
    The layer's own v (the first layer's becomes v_first) is a view of launch 1's output. `overlap`: each launch a
    programmatic dependent one where the GPU takes it (RunConfig.overlapped_launches)."""
    ln1_w, ln1_b, ln2_w, ln2_b, x_r, x_w, x_k, x_v, x_a, x_g, w0, w1, w2, a0, a1, a2, v0, v1, v2, g1, g2 = p[:21]
    k_k, k_a, r_k, W_r, W_k, W_v, W_o, ln_x_w, ln_x_b, ffn_x_k, ffn_W_k, ffn_W_v = p[21:]
    C = x.shape[1]
    residual = v_first is not None  # the value residual: every layer but the first
    first = [(W_r.t(), x_r), (W_k.t(), x_k), (W_v.t(), x_v), (w1, x_w), (a1, x_a)]
    first += [(v1, x_v)] * residual + [(g1, x_g)]
    projections = [Projection(w, mix=m) for w, m in first]
    norm = Norm(ln1_w, ln1_b, ln_eps)
    proj, h = grouped_gemv(x, projections, last=last[:, 0], norm=norm, overlap=overlap)  # (B, 3C + LoRAs)
    col = 3 * C
    second = []
    for weight, act in [(w2, "tanh"), (a2, None)] + [(v2, None)] * residual + [(g2, "sigmoid")]:
        second.append(Projection(weight, x_col=col, act=act))
        col += weight.shape[0]
    lora = grouped_gemv(proj, second, overlap=overlap)  # (B, 3C or 4C): z_w, z_a, [z_v], g
    mix = (w0, a0, v0, k_k, k_a, r_k, ln_x_w, ln_x_b)
    y, S = time_mix_step(proj, lora, S, *mix, v_first, DECAY_SCALE, LN_X_EPS, overlap)
    x = grouped_gemv(y, [Projection(W_o.t())], residual=x, overlap=overlap)
    key = Projection(ffn_W_k.t(), mix=ffn_x_k, out_act="relu2")
    hidden, h2 = grouped_gemv(x, [key], last=last[:, 1], norm=Norm(ln2_w, ln2_b, ln_eps), overlap=overlap)
    x = grouped_gemv(hidden, [Projection(ffn_W_v.t())], residual=x, overlap=overlap)
    return x, proj[:, 2 * C : 3 * C], h, h2, S


def _blocks_one_kernels(
    x: Tensor, shift: Tensor, wkv: Tensor, params: list[list[Tensor]], ln_eps: float, overlap: bool = False
):
    """`_blocks_one` through `_block_one_kernels`: x (B, C) after ln0, the state's shift (B, L, 2, C) and wkv
    (B, L, H, N, N), each layer's `step_tensors()`. Returns x, the new token shifts (2L of (B, C)) and the L new S."""
    v_first = None  # layer 0 sets it
    shifts, wkvs = [], []
    for i, p in enumerate(params):
        x, v, h, h2, S = _block_one_kernels(x, v_first, shift[:, i], wkv[:, i], p, ln_eps, overlap)
        v_first = v if v_first is None else v_first
        shifts += [h, h2]
        wkvs.append(S)
    return x, shifts, wkvs


# a no-op outside torch.compile (see _blocks_one)
_block_one_region = torch.compiler.nested_compile_region(_block_one)


@functools.cache
def _blocks_one_scripted():
    """`_blocks_one` through TorchScript, compiled on the first step: per token it runs some 60 small ops a layer,
    whose Python dispatch is what separated our step from the `rwkv` package's (which scripts its step for the
    same reason): at 12 layers of width 64 on 2 CPU cores, 2.8 ms a token eager, 1.4 ms the package's, about the
    package's in one scripted call. torch deprecates TorchScript but still ships it; its warning is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_blocks_one)
