"""RWKV-4: one network, two formulations.

    logits, state = model(tokens, state)      # tokens (B, T): parallel over T (training, prefill)
    logits, state = model.step(token, state)  # token (B,): the RNN form, one token at a time

Both share the weights and the constant-size state, a tensor (B, L, 5, C) holding per layer
[att x_{t-1}, a, b, p, ffn x_{t-1}] (the order of the `rwkv` package). Parameter names are the keys of the
released BlinkDL checkpoints, so `model.state_dict()` is a BlinkDL state dict.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn as nn

from .config import RWKVConfig, get_config
from .norm_mix import mix, norm_shift_mix, norm_shift_mix_eager, token_shift
from .wkv import P_EMPTY, compute_dtype, resolve_backend, wkv

ATT_X, ATT_A, ATT_B, ATT_P, FFN_X = range(5)
# fp16: the residual stream is halved every RESCALE_EVERY layers (the rwkv package's and transformers' default)
RESCALE_EVERY = 6
STATE_SLOTS = ("att_x", "att_a", "att_b", "att_p", "ffn_x")


class TimeMix(nn.Module):
    def __init__(self, config: RWKVConfig):
        super().__init__()
        C = config.n_embd
        self.time_decay = nn.Parameter(torch.empty(C))
        self.time_first = nn.Parameter(torch.empty(C))
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def mixes(self) -> tuple[nn.Parameter, ...]:
        return self.time_mix_k, self.time_mix_v, self.time_mix_r

    def decay(self) -> torch.Tensor:
        """w = exp(time_decay) (C,), in fp32 at least: a bf16 time_decay would lose the long half-lives."""
        return torch.exp(self.time_decay.to(compute_dtype(self.time_decay)))

    def forward(self, x, last_x, wkv_state, backend, scale: int = 1, trace: dict | None = None):
        # x (B, T, C): LN1 output; last_x (B, C); wkv_state (B, 3, C); the output comes divided by `scale`
        prev = token_shift(x, last_x)
        xk, xv, xr = (mix(x, prev, mu) for mu in self.mixes())
        out, wkv_state = self.from_mixed(xk, xv, xr, wkv_state, backend, scale, trace)
        return out, x[:, -1], wkv_state

    def from_mixed(self, xk, xv, xr, wkv_state, backend, scale: int = 1, trace: dict | None = None):
        """The half after its mixes: projections, the WKV, the sigmoid(r) gate, the output projection."""
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        w = self.decay()
        if trace is not None:
            trace.update(w=w, u=self.time_first, k=k, v=v, wkv_state=wkv_state)
        y, wkv_state = wkv(w, self.time_first, k, v, wkv_state, backend=backend, check=False)
        mixed = torch.sigmoid(r) * y
        return self.output(mixed / scale if scale != 1 else mixed), wkv_state


class ChannelMix(nn.Module):
    def __init__(self, config: RWKVConfig):
        super().__init__()
        C = config.n_embd
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, config.dim_ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(config.dim_ffn, C, bias=False)

    def mixes(self) -> tuple[nn.Parameter, ...]:
        return self.time_mix_k, self.time_mix_r

    def forward(self, x, last_x, scale: int = 1):
        prev = token_shift(x, last_x)
        xk, xr = (mix(x, prev, mu) for mu in self.mixes())
        return self.from_mixed(xk, xr, scale), x[:, -1]

    def from_mixed(self, xk, xr, scale: int = 1):
        k = torch.square(torch.relu(self.key(xk)))  # (B, T, 4C)
        r = torch.sigmoid(self.receptance(xr))
        return r * self.value(k / scale if scale != 1 else k)


class Block(nn.Module):
    def __init__(self, config: RWKVConfig, layer_id: int):
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        # the first block normalises the embeddings
        self.ln0 = nn.LayerNorm(C, eps=eps) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix(config)
        self.ffn = ChannelMix(config)

    def forward(self, x, state, backend, scale: int = 1, trace: dict | None = None):
        # state (B, 5, C) for this layer; returns the new one. x carries the residual divided by `scale`.
        # `trace`, a dict, receives what the layer computed (see RWKV.forward's `trace`).
        if self.ln0 is not None:
            x = self.ln0(x)
        h = self.ln1(x)
        att, att_x, wkv_state = self.att(h, state[:, ATT_X], state[:, ATT_A : ATT_P + 1], backend, scale, trace)
        x = x + att
        h2 = self.ln2(x)
        ffn, ffn_x = self.ffn(h2, state[:, FFN_X], scale)
        x = x + ffn
        if trace is not None:
            trace.update(att_in=h, ffn_in=h2, out=x)
        return x, new_layer_state(att_x, wkv_state, ffn_x, state.dtype)


def new_layer_state(att_x, wkv_state, ffn_x, dtype) -> torch.Tensor:
    """The layer's state (B, 5, C) after the block: [att x, a, b, p, ffn x]."""
    return torch.cat([att_x[:, None].to(dtype), wkv_state.to(dtype), ffn_x[:, None].to(dtype)], dim=1)


def block_with_fused_mixes(block: Block, x, state, backend, scale: int = 1):
    """`Block.forward` with each half's LayerNorm, token shift and mixes as one op (`norm_mix.norm_shift_mix`:
    Triton kernels, one launch forward and one backward, beside the WKV's), the rest of the halves as the eager
    block runs them. The fused blocks' default on CUDA (RWKV.norm_mix_kernels); with another WKV backend than
    the Triton kernel the op is the eager LayerNorm and mixes (float64 on the CPU; and the CPU tests of the
    chunked path, which would otherwise run the kernels in Triton's interpreter, minutes of CI)."""
    norm_mix = norm_shift_mix if resolve_backend(backend, x) == "triton" else norm_shift_mix_eager
    if block.ln0 is not None:
        x = block.ln0(x)
    (xk, xv, xr), att_x = norm_mix(x, block.ln1, state[:, ATT_X], block.att.mixes())
    att, wkv_state = block.att.from_mixed(xk, xv, xr, state[:, ATT_A : ATT_P + 1], backend, scale)
    x = x + att
    (xk, xr), ffn_x = norm_mix(x, block.ln2, state[:, FFN_X], block.ffn.mixes())
    x = x + block.ffn.from_mixed(xk, xr, scale)
    return x, new_layer_state(att_x, wkv_state, ffn_x, state.dtype)


HEAD_PAD = 64


def padded_head(
    hidden: torch.Tensor, weight: torch.Tensor, multiple: int = HEAD_PAD, keep_padding: bool = False
) -> torch.Tensor:
    """hidden (..., C) @ weight (V, C)^T with the vocabulary padded to a multiple of `multiple`: the same logits
    (..., V), a view whose rows are `multiple`-aligned; `keep_padding`: the whole padded logits (..., V_pad), whose
    columns past V are zeros (a loss that reads the first V of them, as lm_loss's compiled cross-entropy does, then
    gives its gradient at full width, without the copy that a view's backward makes).

    The released RWKV-4 vocabulary, 50277, is odd: logits with rows of 50277 elements leave cuBLAS only unaligned
    kernels (on the H200 an sm75 'align1' GEMM in the head's three matmuls, the largest kernels of a training step:
    results/history/training_speed/before_head_pad/). Pythia pads to 50304 in the checkpoint; RWKV-4's checkpoints
    keep 50277 rows,
    so the padding is made here, per step (a copy of the head, small beside the logits). Training on CUDA uses it
    (RWKV.forward with autograd on)."""
    V = weight.shape[0]
    pad = -V % multiple
    if pad == 0:
        return nn.functional.linear(hidden, weight)
    logits = nn.functional.linear(hidden, nn.functional.pad(weight, (0, 0, 0, pad)))  # (..., V_pad)
    return logits if keep_padding else logits[..., :V]


# What the fused blocks keep for the backward (RWKV.saved_activations)
SAVED_ACTIVATIONS = ("matmuls", "partitioner")
# the ops whose outputs "matmuls" keeps: each costs a GEMM (or the WKV's scan) to recompute, or, for the LayerNorm
# and mix kernels, is the matmuls' input (kept, their backward needs no second forward launch)
KEPT_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "rwkv_lab::wkv_forward", "rwkv_lab::norm_mix_forward"})


def check_saved_activations(saved: str, budget: float, owner: str = "RWKV") -> None:
    """What the fused blocks keep (`saved`) and the partitioner's share (`budget`), checked where they are set."""
    if saved not in SAVED_ACTIVATIONS:
        raise ValueError(f"{owner}.saved_activations must be one of {SAVED_ACTIVATIONS}; got {saved!r}")
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"{owner}.activation_memory_budget must be in [0, 1] (1: all it chooses); got {budget}")
    if budget != 1.0 and saved != "partitioner":
        raise ValueError(
            f"{owner}.activation_memory_budget {budget} needs saved_activations='partitioner' (got {saved!r}, "
            "which decides what is kept itself)"
        )


def _keep_matmul_outputs(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy  # noqa: PLC0415

    name = op.name() if hasattr(op, "name") else str(op)
    return CheckpointPolicy.MUST_SAVE if name in KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def keeping_matmul_outputs(forward, block, x, state, backend, scale: int = 1):
    """A block's `forward` (Block.forward or block_with_fused_mixes) under selective activation checkpointing: the
    backward gets the block's input, the outputs of its seven matmuls and of the WKV, with block_with_fused_mixes
    also the five mixes the LayerNorm and mix kernels write (the matmuls' inputs: their backward then needs no
    second forward launch), and recomputes everything else elementwise (with Block.forward the LayerNorms, token
    shifts and mixes too; the gates, squared ReLU, the residual between the two halves). No matmul runs twice.
    What that is per layer and token, beside the partitioner's choice and the GPT-NeoX layer, is counted on the CPU
    by benchmarks/saved_activations.py (results/training/saved_activations_by_kind.csv)."""
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts  # noqa: PLC0415

    contexts = functools.partial(create_selective_checkpoint_contexts, _keep_matmul_outputs)
    return checkpoint(forward, block, x, state, backend, scale, use_reentrant=False, context_fn=contexts)


@functools.cache
def fused_block_forward(saved_activations: str = "matmuls", memory_budget: float = 1.0, norm_mix_kernels=True):
    """A block's forward through torch.compile: the fast path of the parallel form on CUDA (training, prefill).

    `norm_mix_kernels` (RWKV.norm_mix_kernels, the default): the block is `block_with_fused_mixes`, each half's
    LayerNorm, token shift and mixes in the Triton kernels of `norm_mix`; otherwise `Block.forward`, whose
    LayerNorms and mixes inductor fuses itself. Around them inductor fuses the gates, the squared ReLU and the
    residual adds into a few kernels between the matmuls. The WKV stays the Triton kernel. Both are custom ops
    the compiler treats as opaque. One function for every block of every model: the block's parameters are graph
    inputs, so one compilation serves all layers of a shape (the first block, with ln0, gets its own).

    What the backward gets (RWKV.saved_activations): "matmuls" (the default) keeps the outputs of the matmuls and
    of the WKV (and the LayerNorm and mix kernels' mixes, the matmuls' inputs) and recomputes the other
    elementwise results in the backward (`keeping_matmul_outputs`);
    "partitioner" leaves the choice to torch._functorch's min-cut partitioner, which at `memory_budget` 1 keeps
    more per token than the matched GPT-NeoX layer (results/training/saved_activations.csv) and below 1 keeps at
    most that share of it, recomputing the rest, matmuls included (`activation_memory_budget`). What each costs
    in speed is measured on the GPU (benchmarks/bench_training.py --saved-activations, --memory-budget,
    --norm-mix-kernels).

    Inductor's "mix-order reduction" (torch 2.10-2.11, CUDA) returns the (1, 1, C) mix parameters' gradients as
    (C,), which autograd refuses ("CompiledFunctionBackward returned an invalid gradient ... got [C] but expected
    shape compatible with [1, 1, C]", pytorch/pytorch#178080): that one fusion is turned off here."""
    import torch._functorch.config  # noqa: PLC0415 - loaded with the compiler, not with the model
    import torch._inductor.config  # noqa: PLC0415

    check_saved_activations(saved_activations, memory_budget)
    # Each model width, the first block (ln0) and each new sequence shape add a compilation; past dynamo's default
    # limit of 8 it silently runs the function eager, which a benchmark of several sizes reaches.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    options = {}
    if hasattr(torch._inductor.config.triton, "mix_order_reduction"):
        options["triton.mix_order_reduction"] = False
    forward = block_with_fused_mixes if norm_mix_kernels else Block.forward
    if saved_activations == "matmuls":

        def checkpointed(block, x, state, backend, scale: int = 1):
            return keeping_matmul_outputs(forward, block, x, state, backend, scale)

        return torch.compile(checkpointed, options=options)
    if memory_budget == 1.0:
        return torch.compile(forward, options=options)
    from torch._inductor.compile_fx import compile_fx  # noqa: PLC0415

    def inductor_within_budget(graph, example_inputs):
        # the partitioner reads the budget while this compiles the graph. A backend of its own, not a patch
        # around the call: dynamo reuses a compiled graph for any backend equal to its own, and torch.compile's
        # inductor backends with equal options are equal, whatever the budget was
        with torch._functorch.config.patch(activation_memory_budget=memory_budget):
            return compile_fx(graph, example_inputs, config_patches=options)

    return torch.compile(forward, backend=inductor_within_budget)


class RWKV(nn.Module):
    def __init__(self, config: RWKVConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Which WKV formulation the parallel form uses (see wkv.BACKENDS); 'auto' picks the fastest exact one.
        self.wkv_backend = "auto"
        # fp16 only: halve the residual stream every `rescale_every` layers (and divide the blocks' outputs to
        # match), as the rwkv package and transformers do; the released 3B-14B models' residuals outgrow fp16.
        # LayerNorm makes this exact up to its eps. 0 turns it off.
        self.rescale_every = RESCALE_EVERY
        # Whether the parallel form runs its blocks through `fused_block_forward` (torch.compile): 'auto' does when
        # training on CUDA with the Triton WKV, True everywhere, False never (the eager Block, the reference).
        self.fused_blocks: bool | str = "auto"
        # What the fused blocks keep for the backward: "matmuls" (the matmuls' and the WKV's outputs, the rest
        # recomputed) or "partitioner" (the compiler's choice, of which `activation_memory_budget` allows a share:
        # 1 all it chooses, lower recomputes more). See fused_block_forward.
        self.saved_activations = "matmuls"
        self.activation_memory_budget = 1.0
        # Whether the fused blocks run each half's LayerNorm, token shift and mixes in norm_mix's Triton kernels
        # (block_with_fused_mixes) or leave them to inductor (Block.forward).
        self.norm_mix_kernels = True

    @property
    def dtype(self) -> torch.dtype:
        return self.emb.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    @property
    def state_dtype(self) -> torch.dtype:
        """The state accumulates sums: float32, or float64 for a float64 model."""
        return compute_dtype(self.emb.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch: int = 1) -> torch.Tensor:
        """The empty state (B, L, 5, C): zero token shifts and sums, p = P_EMPTY."""
        cfg = self.config
        state = torch.zeros(batch, cfg.n_layer, 5, cfg.n_embd, dtype=self.state_dtype, device=self.device)
        state[:, :, ATT_P] = P_EMPTY
        return state

    def check_tokens(self, tokens: torch.Tensor, ndim: int) -> None:
        shape = "(B, T)" if ndim == 2 else "(B,)"
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of shape {shape}; got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be int64 or int32 (token ids: .long() converts); got {tokens.dtype}")
        if tokens.dim() != ndim:
            raise ValueError(f"tokens must have shape {shape}; got {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}); need at least one token per sequence")
        if tokens.device != self.device:
            raise ValueError(f"tokens are on {tokens.device} but the model is on {self.device}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"token id {bad} is out of range: this model's vocabulary is [0, {self.config.vocab_size})"
            )

    def check_state(self, state: torch.Tensor, batch: int) -> None:
        cfg = self.config
        expected = (batch, cfg.n_layer, 5, cfg.n_embd)
        if not isinstance(state, torch.Tensor):
            raise TypeError(
                f"state must be a tensor of shape {expected} (from model.init_state); got {type(state).__name__}"
            )
        if tuple(state.shape) != expected:
            raise ValueError(f"state must have shape (B, L, 5, C) = {expected}; got {tuple(state.shape)}")
        if state.dtype != self.state_dtype:
            raise TypeError(f"state must be {self.state_dtype} for a {self.dtype} model; got {state.dtype}")
        if state.device != self.device:
            raise ValueError(f"state is on {state.device} but the model is on {self.device}")
        if not bool(torch.isfinite(state).all()):
            bad = (~torch.isfinite(state)).nonzero()[0].tolist()
            raise ValueError(
                f"state holds NaN or infinite values (first at [batch, layer, slot, channel] = {bad}, slot "
                f"{STATE_SLOTS[bad[2]]}); a state from init_state or from this model's outputs is always finite"
            )

    def _checked_inputs(self, tokens: torch.Tensor, state: torch.Tensor | None, check: bool) -> torch.Tensor:
        """Validate tokens (B, T) and the state (when `check`); an absent state becomes the empty one."""
        if check:
            self.check_tokens(tokens, ndim=2)
        if state is None:
            return self.init_state(tokens.shape[0])
        if check:
            self.check_state(state, tokens.shape[0])
        return state

    def forward(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor | None = None,
        *,
        backend: str | None = None,
        check: bool = True,
        trace: list | None = None,
        padded_vocab: bool = False,
    ):
        """Parallel form: tokens (B, T) -> logits (B, T, V) and the state after the last token.

        `padded_vocab`: where the head is padded (training on CUDA, see padded_head) the logits keep the padding,
        (B, T, V_pad) with zeros past V, for a loss that reads the first V columns (training.loss.lm_loss).

        `trace`, a list, receives one dict per layer of what it computed, for analysis: `att_in` / `ffn_in` the
        time-mix and channel-mix inputs (B, T, C) (LayerNorm outputs, whose last row is the next token-shift
        state), `w`, `u`, `k`, `v`, `wkv_state` what its WKV was given, `out` the block's output (B, T, C).
        """
        hidden, state = self.hidden(tokens, state, backend=backend, check=check, trace=trace)
        if hidden.is_cuda and torch.is_grad_enabled():
            return padded_head(hidden, self.head.weight, keep_padding=padded_vocab), state  # (B, T, V[_pad])
        return self.head(hidden), state  # (B, T, V)

    def hidden(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor | None = None,
        *,
        backend: str | None = None,
        check: bool = True,
        trace: list | None = None,
    ):
        """The last hidden states (B, T, C), after ln_out, and the new state: `forward` without the head, so a
        caller can apply `head` to the positions it needs."""
        state = self._checked_inputs(tokens, state, check)
        x, new_state = self.run_blocks(self.emb(tokens), state, backend or self.wkv_backend, trace=trace)
        return self.ln_out(x), torch.stack(new_state, dim=1)

    @torch.no_grad()
    def store_projections_transposed(self) -> RWKV:
        """Keep every projection matrix transposed in memory (same values, same shape, column-major strides).

        A one-token step multiplies a vector by each matrix; on the CPU, BLAS streams a column-major matrix from
        memory markedly faster for that (169M fp32 on 2 cores: +10% decode tokens/s, +4% prefill; the `rwkv`
        package stores its weights this way too). Results are equal up to the order of float additions.
        Idempotent; the CPU decoder calls it.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
        return self

    @torch.no_grad()
    def wkv_inputs(self, tokens: torch.Tensor, layer: int, state: torch.Tensor | None = None) -> dict:
        """What layer `layer`'s WKV sees for tokens (B, T): {w, u, k, v, wkv_state} (see `forward`'s trace)."""
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in [0, {self.config.n_layer}); got {layer}")
        state = self._checked_inputs(tokens, state, check=True)
        trace: list = []
        self.run_blocks(self.emb(tokens), state, self.wkv_backend, n_blocks=layer + 1, trace=trace)
        return {key: trace[layer][key] for key in ("w", "u", "k", "v", "wkv_state")}

    def prefill(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor | None = None,
        *,
        chunk: int | None = None,
        backend: str | None = None,
        check: bool = True,
    ):
        """Parallel form for a prompt: tokens (B, T) -> logits of the last token (B, V) and the state.

        Only the last position goes through the head, and `chunk` bounds the memory: T is run in pieces of `chunk`
        tokens with the state carried between them, which gives the same result as one call.
        """
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive number of tokens or None (the whole prompt); got {chunk!r}")
        state = self._checked_inputs(tokens, state, check)
        T = tokens.shape[1]
        chunk = chunk or T
        for start in range(0, T, chunk):
            x, layer_states = self.run_blocks(
                self.emb(tokens[:, start : start + chunk]), state, backend or self.wkv_backend
            )
            state = torch.stack(layer_states, dim=1)
        return self.head(self.ln_out(x[:, -1])), state

    def run_blocks(self, x, state, backend, n_blocks: int | None = None, trace: list | None = None):
        """x (B, T, C) through the first `n_blocks` blocks: x (fp16: divided by the rescale) and their states."""
        rescale = self.rescale_every if self.dtype == torch.float16 else 0
        fused = self.uses_fused_blocks(x, backend, trace)
        new_state = []
        for i, block in enumerate(self.blocks[:n_blocks]):
            layer_trace = None
            if trace is not None:
                layer_trace = {}
                trace.append(layer_trace)
            scale = 2 ** (i // rescale) if rescale else 1
            if fused:
                try:
                    x, layer_state = fused_block_forward(
                        self.saved_activations, self.activation_memory_budget, self.norm_mix_kernels
                    )(block, x, state[:, i], backend, scale)
                except torch._dynamo.exc.TorchDynamoException as err:
                    # a compiler failure costs speed, never the result: warn once, then run eager
                    message = f"fused blocks unavailable, running the eager blocks ({type(err).__name__}: {err})"
                    warnings.warn(message, stacklevel=2)
                    self.fused_blocks = fused = False
            if not fused:
                x, layer_state = block(x, state[:, i], backend, scale, layer_trace)
            new_state.append(layer_state)
            if rescale and (i + 1) % rescale == 0:
                x = x / 2
        return x, new_state

    def uses_fused_blocks(self, x: torch.Tensor, backend: str, trace) -> bool:
        """Whether `run_blocks` takes the compiled path: never with a trace (recorded in Python) or the token-by-
        token recurrent WKV; with 'auto', when training (autograd recording) on CUDA with the Triton WKV.
        Inference (prefill, lm-eval) keeps the eager blocks around the Triton WKV under 'auto': that is the path
        whose speed and first-call latency were measured on the GPU (results/inference/), where a compiled prefill
        would add compilations to a first call and to new prompt lengths (until the compiler makes the length
        dynamic), unmeasured so far; set True to take the compiled path there too."""
        if self.fused_blocks is False or trace is not None or backend == "recurrent":
            return False
        if self.fused_blocks == "auto":
            return torch.is_grad_enabled() and x.is_cuda and resolve_backend(backend, x) == "triton"
        return True

    def step(self, token: torch.Tensor, state: torch.Tensor | None = None, *, check: bool = True):
        """RNN form: one token per sequence, token (B,) -> logits (B, V), state (B, L, 5, C)."""
        if check:
            self.check_tokens(token, ndim=1)
        logits, state = self.forward(token[:, None], state, backend="recurrent", check=check)
        return logits[:, 0], state


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
