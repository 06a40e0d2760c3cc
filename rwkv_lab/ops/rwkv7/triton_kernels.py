"""The RWKV-7 state update as Triton kernels: forward and backward, state in and out.

The design is RWKV-LM's x070 CUDA kernel (RWKV-v7/cuda/wkv7_cuda.cu, "wind_backstepping"): the recurrence itself,
one token at a time, with each program holding a slice of a head's N x N state in registers.

forward   one program per (block of BV value rows, head, batch): S[rows, :] (BV, N) in registers; per token
          sa = S a, S <- S diag(w) + sa b^T + v k^T, y = S r. Value rows never interact (the transition acts on
          the key side), so the BV-row slices of one head run in parallel: B H N/BV programs. For the backward it
          keeps sa (B, T, H, N) and the state at the end of every stretch of STRETCH tokens (and at the last token).
backward  one program per (block of BV_BWD value rows, head, batch), from the last token back: G = dL/dS_t
          (BV, N) in registers, and S_t, reloaded at the end of each stretch and stepped back within it,
          S_{t-1} = (S_t - v k^T - sa b^T) diag(1/w). Per token, with G += dy r^T:
              dr = S_t^T dy     dv = G k     dk = G^T v     dsa = G b     db = G^T sa
              dlog_w = w * (sum over rows of G * S_{t-1})     da = S_{t-1}^T dsa
              G <- G diag(w) + dsa a^T
          dv and dsa are sums over keys, within a program; dr, dk, db, dlog_w, da are sums over value rows: with
          BV_BWD = N one program owns them (stored directly), with fewer rows the programs add their parts
          (atomics into fp32 buffers, or each block's part stored and torch adding them: `Tiling.partials`). What is
          left in G at t = 0 is the initial state's gradient.
          With `Tiling.parallel`, the stretches step back in parallel: a first pass (_wkv7_bwd_carry) carries only G
          back over T (G += dy r^T, G <- G diag(w) + (G b) a^T: no state, a third of a token's arithmetic) and
          keeps it at each stretch's end, beside the forward's kept states; then one program per (row block,
          stretch) starts from both there and steps back through its STRETCH tokens only, as above: T / STRETCH
          times the programs, each STRETCH dependent steps long instead of T, for a second copy of the kept states'
          memory. Slower than the default on an H100 (benchmarks/bench_wkv7.py: forward + backward 4.32 vs 3.85 ms
          at (B, T, C) = (8, 1024, 2048), 29.5 vs 28.6 at (16, 4096, 2048), with about 30% more memory;
          results/history/wkv7/wkv7_gpu_benchmark_8f2bcfe.csv, a run whose fla stage outlasted its time): the
          carrying pass costs more than the T / STRETCH times the programs win back, as the default backward
          already has B H N / rows_bwd programs. Off by default; a Tiling chooses it.

The tiling (STRETCH, BV, BV_BWD, warps, how the backward adds its parts) is a `Tiling`, passed by the caller to
`wkv7_triton` and carried from the forward to its backward (the autograd context, the custom operator's argument):
one call's forward and backward always agree on the stretch (they share the kept states' layout). Each tiling is
its own compiled kernel (its values are constexprs and launch options). Per token, each program loads the next
token's inputs before this token's arithmetic and converts them to the compute dtype only when it uses them (a
conversion right after a load would wait on memory there).

Stepping back divides by w: within a stretch the rounding of S_t grows by at most e^{(STRETCH-1) |log_w|}. RWKV-7's
decays are bounded, log_w >= -e^{-0.5} (the model's w = exp(-e^{-0.5} sigmoid(.))), so the growth is bounded too
(LOG_W_MIN, the bound this backend accepts; `wkv7` refuses smaller log_w for it when asked to check). The forms in
chunked.py and reference.py take any log_w <= 0.

Arithmetic is fp32 for fp32 / bf16 / fp16 inputs (the state fp32) and fp64 for fp64 inputs (a check of the
algorithm itself: stepping back then costs ~1e-12). Runs on CUDA tensors, and on CPU tensors under
TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
import triton
import triton.language as tl

from ...triton_launch import CachedLauncher
from .common import compute_dtype


@dataclass(frozen=True)
class Tiling:
    """How the kernels split one head's work; each field is a constexpr or launch option of the kernels."""

    stretch: int = 16  # tokens between the states the forward keeps (the backward steps back at most stretch - 1)
    rows: int = 32  # value rows per program in the forward (at most N)
    warps: int = 4  # per program, forward
    rows_bwd: int = 16  # value rows per program in the backward (>= N: one program per head, no sums across them)
    warps_bwd: int = 1  # one warp: every sum over rows or keys within a warp (shuffles, no shared-memory barrier)
    partials: bool = False  # rows_bwd < N: each row block's key-side part stored, torch adds them (else atomics)
    parallel: bool = False  # the backward's stretches in parallel after a pass carrying dL/dS alone (see above)

    def __post_init__(self):
        for name in ("rows", "warps", "rows_bwd", "warps_bwd"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1 and value & (value - 1) == 0):
                raise ValueError(f"Tiling.{name} must be a power of two >= 1; got {value!r}")
        if not (isinstance(self.stretch, int) and self.stretch >= 1):
            raise ValueError(f"Tiling.stretch must be an integer >= 1; got {self.stretch!r}")

    def as_list(self) -> list[int]:
        """The custom operators' form of it (their schema takes int[])."""
        return [int(x) for x in astuple(self)]

    @classmethod
    def from_list(cls, values) -> Tiling:
        stretch, rows, warps, rows_bwd, warps_bwd, partials, parallel = values
        return cls(stretch, rows, warps, rows_bwd, warps_bwd, bool(partials), bool(parallel))


# The default (bench_wkv7 times the others beside it; compile_wkv7 reads what each compiles to without a GPU).
# Backward: 16 rows and one warp per program, 4 programs per N = 64 head. The x070 design's one program of 64 rows
# and 4 warps spilled registers and reduced over rows across warps through shared memory, with barriers, several
# times per token (results/wkv7/wkv7_compiled.csv); in one warp each thread holds whole columns of its 16 rows, so
# the 5 sums over rows stay within a thread and the 2 over keys are shuffles. Its key-side parts are added by fp32
# atomics (relaxed: no ordering needed; partial buffers would write and read 5 x 4 fp32 copies of the inputs).
# Forward: 32 rows, 4 warps (16 rows and 1 warp are as fast: forward + backward within 0.2% at (8, 1024, 2048) on an
# H200, results/history/wkv7/wkv7_gpu_benchmark_8cdf618.csv).
DEFAULT = Tiling()
# how the backward's key-side gradients are written (its SUMS constexpr)
STORE, ATOMIC, PARTIAL = 0, 1, 2
# the smallest log_w the backend takes: RWKV-7's bound -e^{-0.5} = -0.6065, with room for a bf16 rounding of it
LOG_W_MIN = -0.62


@triton.jit
def _within(idx, t, T):
    """A mask the shape of `idx`: whether token t is one of 0..T-1 (elementwise: the interpreter takes no scalar
    masks)."""
    at = idx * 0 + t
    return (at >= 0) & (at < T)


@triton.jit
def _load_token(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr, base, cols, rows, t, T):
    """Token t's (r, log_w, k, a, b) (N,) and this program's rows of v (BV,), at `base` = (b, t, h, 0), in their
    storage dtypes (converted where used: see the module's docstring); zeros past either end."""
    cm, rm = _within(cols, t, T), _within(rows, t, T)
    r = tl.load(r_ptr + base + cols, mask=cm, other=0.0)
    log_w = tl.load(w_ptr + base + cols, mask=cm, other=0.0)
    k = tl.load(k_ptr + base + cols, mask=cm, other=0.0)
    a = tl.load(a_ptr + base + cols, mask=cm, other=0.0)
    b = tl.load(b_ptr + base + cols, mask=cm, other=0.0)
    v = tl.load(v_ptr + base + rows, mask=rm, other=0.0)
    return r, log_w, k, a, b, v


@CachedLauncher
@triton.jit
def _wkv7_fwd(
    r_ptr,
    w_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    s0_ptr,
    y_ptr,
    sa_ptr,
    keep_ptr,
    final_ptr,
    T,
    H,
    N: tl.constexpr,
    BV: tl.constexpr,
    STRETCH: tl.constexpr,
    HAS_STATE: tl.constexpr,
    SAVE: tl.constexpr,
    DT: tl.constexpr,
):
    iv, h, bb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = iv * BV + tl.arange(0, BV)  # value indices of this program's slice
    cols = tl.arange(0, N)  # key indices
    head = (bb * H + h).to(tl.int64)
    tile = rows[:, None] * N + cols[None, :]  # (BV, N) offsets within one head's N x N state
    if HAS_STATE:
        S = tl.load(s0_ptr + head * N * N + tile).to(DT)
    else:
        S = tl.zeros((BV, N), DT)
    n_keep = tl.cdiv(T, STRETCH)
    step = H * N  # from one token to the next in (B, T, H, N)
    base = (bb * T * H + h).to(tl.int64) * N  # (b, 0, h, 0)
    r1, w1, k1, a1, b1, v1 = _load_token(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr, base, cols, rows, 0, T)
    for t in range(0, T):
        r, w, k, a, b, v = r1.to(DT), tl.exp(w1.to(DT)), k1.to(DT), a1.to(DT), b1.to(DT), v1.to(DT)
        # the next token's inputs, loaded before this token's arithmetic: the loop waits on the state, not on memory
        r1, w1, k1, a1, b1, v1 = _load_token(
            r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr, base + step, cols, rows, t + 1, T
        )
        sa = tl.sum(S * a[None, :], axis=1)  # (BV,): S_{t-1} a, what the transition removes
        S = S * w[None, :] + sa[:, None] * b[None, :] + v[:, None] * k[None, :]
        y = tl.sum(S * r[None, :], axis=1)
        tl.store(y_ptr + base + rows, y.to(y_ptr.dtype.element_ty))
        if SAVE:
            tl.store(sa_ptr + base + rows, sa)
            if ((t + 1) % STRETCH == 0) | (t == T - 1):
                tl.store(keep_ptr + (head * n_keep + t // STRETCH) * N * N + tile, S)
        base += step
    tl.store(final_ptr + head * N * N + tile, S)


@triton.jit
def _key_gradient(ptr, base, cols, x, SUMS: tl.constexpr):
    """A gradient over the key index: this program's rows' part added (ATOMIC) or stored (PARTIAL: `base` points
    into this row block's copy), or the whole stored (STORE)."""
    if SUMS == 1:
        tl.atomic_add(ptr + base + cols, x, sem="relaxed")
    else:
        tl.store(ptr + base + cols, x.to(ptr.dtype.element_ty))


@CachedLauncher
@triton.jit
def _wkv7_bwd_carry(
    r_ptr,
    w_ptr,
    a_ptr,
    b_ptr,
    gy_ptr,
    gstate_ptr,
    gkeep_ptr,
    dstate_ptr,
    T,
    H,
    N: tl.constexpr,
    BV: tl.constexpr,
    STRETCH: tl.constexpr,
    HAS_GSTATE: tl.constexpr,
    DT: tl.constexpr,
):
    """Tiling.parallel's first pass: G = dL/dS_t carried from the last token back, kept (B, H, n_keep, N, N) at the
    end of each stretch before that token's own part is added (what _wkv7_bwd's program for the stretch starts
    from), and left at t = 0 as the initial state's gradient."""
    iv, h, bb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = iv * BV + tl.arange(0, BV)
    cols = tl.arange(0, N)
    head = (bb * H + h).to(tl.int64)
    tile = rows[:, None] * N + cols[None, :]
    if HAS_GSTATE:
        G = tl.load(gstate_ptr + head * N * N + tile).to(DT)
    else:
        G = tl.zeros((BV, N), DT)
    n_keep = tl.cdiv(T, STRETCH)
    step = H * N
    base = ((bb * T + T - 1) * H + h).to(tl.int64) * N  # (b, T - 1, h, 0)
    for i in range(0, T):
        t = T - 1 - i
        if ((t + 1) % STRETCH == 0) | (t == T - 1):  # the end of a stretch: dL/dS_t from the tokens after it
            tl.store(gkeep_ptr + (head * n_keep + t // STRETCH) * N * N + tile, G)
        r = tl.load(r_ptr + base + cols).to(DT)
        w = tl.exp(tl.load(w_ptr + base + cols).to(DT))
        a = tl.load(a_ptr + base + cols).to(DT)
        b = tl.load(b_ptr + base + cols).to(DT)
        gy = tl.load(gy_ptr + base + rows).to(DT)
        G += gy[:, None] * r[None, :]
        dsa = tl.sum(G * b[None, :], axis=1)
        G = G * w[None, :] + dsa[:, None] * a[None, :]
        base -= step
    tl.store(dstate_ptr + head * N * N + tile, G)


@CachedLauncher
@triton.jit
def _wkv7_bwd(
    r_ptr,
    w_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    gy_ptr,
    sa_ptr,
    keep_ptr,
    gstate_ptr,
    gkeep_ptr,
    dr_ptr,
    dw_ptr,
    dk_ptr,
    dv_ptr,
    da_ptr,
    db_ptr,
    dstate_ptr,
    T,
    H,
    part_stride,
    N: tl.constexpr,
    BV: tl.constexpr,
    STRETCH: tl.constexpr,
    HAS_GSTATE: tl.constexpr,
    SUMS: tl.constexpr,
    DT: tl.constexpr,
    PARALLEL: tl.constexpr,
):
    h, bb = tl.program_id(1), tl.program_id(2)
    n_keep = tl.cdiv(T, STRETCH)
    head = (bb * H + h).to(tl.int64)
    cols = tl.arange(0, N)
    if PARALLEL:  # program (row block, stretch j): the stretch's tokens, from _wkv7_bwd_carry's G at its end
        iv, j = tl.program_id(0) % (N // BV), tl.program_id(0) // (N // BV)
        last = tl.minimum(T, (j + 1) * STRETCH) - 1
        count = last + 1 - j * STRETCH
    else:  # program (row block): every token, from the last
        iv, last, count = tl.program_id(0), T - 1, T
    rows = iv * BV + tl.arange(0, BV)
    tile = rows[:, None] * N + cols[None, :]
    if PARALLEL:
        G = tl.load(gkeep_ptr + (head * n_keep + j) * N * N + tile).to(DT)
    elif HAS_GSTATE:
        G = tl.load(gstate_ptr + head * N * N + tile).to(DT)  # dL/dS_T, the final state's gradient
    else:
        G = tl.zeros((BV, N), DT)
    S = tl.zeros((BV, N), DT)
    step = H * N
    base = ((bb * T + last) * H + h).to(tl.int64) * N  # (b, last, h, 0)
    # PARTIAL: this row block's copy of the key-side gradients, (NBLK, B, T, H, N)
    part = iv.to(tl.int64) * part_stride
    r1, log_w1, k1, a1, b1, v1 = _load_token(r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr, base, cols, rows, last, T)
    gy1 = tl.load(gy_ptr + base + rows)
    sa1 = tl.load(sa_ptr + base + rows)
    for i in range(0, count):
        t = last - i
        r, log_w, k, a, b, v = r1.to(DT), log_w1.to(DT), k1.to(DT), a1.to(DT), b1.to(DT), v1.to(DT)
        gy, sa = gy1.to(DT), sa1.to(DT)
        # the previous token's inputs, loaded before this token's arithmetic (as in the forward)
        r1, log_w1, k1, a1, b1, v1 = _load_token(
            r_ptr, w_ptr, k_ptr, a_ptr, b_ptr, v_ptr, base - step, cols, rows, t - 1, T
        )
        gy1 = tl.load(gy_ptr + base - step + rows, mask=_within(rows, t - 1, T), other=0.0)
        sa1 = tl.load(sa_ptr + base - step + rows, mask=_within(rows, t - 1, T), other=0.0)
        if ((t + 1) % STRETCH == 0) | (t == T - 1):  # the end of a stretch: S_t as the forward kept it
            S = tl.load(keep_ptr + (head * n_keep + t // STRETCH) * N * N + tile)
        w = tl.exp(log_w)
        G += gy[:, None] * r[None, :]  # y_t = S_t r_t
        dr = tl.sum(S * gy[:, None], axis=0)
        dv = tl.sum(G * k[None, :], axis=1)
        dk = tl.sum(G * v[:, None], axis=0)
        dsa = tl.sum(G * b[None, :], axis=1)
        db = tl.sum(G * sa[:, None], axis=0)
        S = (S - v[:, None] * k[None, :] - sa[:, None] * b[None, :]) * tl.exp(-log_w)[None, :]  # S_{t-1}
        dw = tl.sum(G * S, axis=0) * w  # d/dlog_w of S_{t-1} diag(e^{log_w})
        da = tl.sum(S * dsa[:, None], axis=0)  # sa = S_{t-1} a
        G = G * w[None, :] + dsa[:, None] * a[None, :]  # dL/dS_{t-1}
        tl.store(dv_ptr + base + rows, dv.to(dv_ptr.dtype.element_ty))
        _key_gradient(dr_ptr, part + base, cols, dr, SUMS)
        _key_gradient(dw_ptr, part + base, cols, dw, SUMS)
        _key_gradient(dk_ptr, part + base, cols, dk, SUMS)
        _key_gradient(da_ptr, part + base, cols, da, SUMS)
        _key_gradient(db_ptr, part + base, cols, db, SUMS)
        base -= step
    if not PARALLEL:  # (else the carrying pass stored it)
        tl.store(dstate_ptr + head * N * N + tile, G)


def tl_dtype(cd: torch.dtype):
    """Triton's dtype for a compute dtype: fp64 for fp64, else fp32 (the kernels' arithmetic)."""
    return tl.float64 if cd == torch.float64 else tl.float32


def check_head_size(N: int) -> None:
    if N < 2 or N & (N - 1):
        raise ValueError(f"wkv7 backend 'triton' needs a head size N that is a power of two >= 2; got N = {N}")


def log_w_bound_error(log_w: torch.Tensor) -> str | None:
    """The one-line refusal for decays below LOG_W_MIN (None when they are all within it): a host sync."""
    lowest = log_w.min().item()
    if lowest >= LOG_W_MIN:
        return None
    return (
        f"wkv7 backend 'triton' takes log_w >= {LOG_W_MIN} (RWKV-7's decays, log_w >= -e^-0.5; its backward steps "
        f"back through 1/w); the smallest is {lowest:.3g}: use backend='chunked' for stronger decays"
    )


# ---- as PyTorch operators -------------------------------------------------------------------------------------
# As RWKV-4's WKV (ops/rwkv4/triton_kernels.py): the launches are plain functions (`_forward`, `_backward`),
# reached under torch.compile as the custom operators rwkv_lab::wkv7_forward / wkv7_backward (fake shapes, a
# registered backward: the compiler sees an opaque op), and eagerly through `EagerWKV7`, an autograd.Function
# calling them without the custom operators' dispatch. The state arrives in the compute dtype; the tiling travels
# with the call (the operators take it as Tiling.as_list()), so a forward's backward uses the forward's tiling.


def _forward(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    tiling: Tiling,
    save: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> y (B, T, H, N) in v's dtype, the final state (B, H, N, N), and for the backward sa (B, T, H, N) and the
    states kept at the end of each stretch (B, H, ceil(T / stretch), N, N), all in the compute dtype (empty
    without `save`)."""
    r, log_w, k, v, a, b = (x.contiguous() for x in (r, log_w, k, v, a, b))
    state = None if state is None else state.contiguous()
    B, T, H, N = k.shape
    check_head_size(N)
    cd = compute_dtype(r, log_w, k, v, a, b, state)
    dev = k.device
    y = torch.empty_like(v)
    final = torch.empty(B, H, N, N, device=dev, dtype=cd)
    n_keep = triton.cdiv(T, tiling.stretch)
    sa = torch.empty((B, T, H, N) if save else (0,), device=dev, dtype=cd)
    kept = torch.empty((B, H, n_keep, N, N) if save else (0,), device=dev, dtype=cd)
    bv = min(tiling.rows, N)
    _wkv7_fwd[(N // bv, H, B)](
        r,
        log_w,
        k,
        v,
        a,
        b,
        state,
        y,
        sa,
        kept,
        final,
        T,
        H,
        N=N,
        BV=bv,
        STRETCH=tiling.stretch,
        HAS_STATE=state is not None,
        SAVE=save,
        DT=tl_dtype(cd),
        num_warps=tiling.warps,
    )
    return y, final, sa, kept


def _forward_for_grad(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    tiling: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """_forward keeping what the backward needs (the custom operator's outputs have fixed shapes)."""
    return _forward(r, log_w, k, v, a, b, state, Tiling.from_list(tiling))


wkv7_forward = torch.library.custom_op("rwkv_lab::wkv7_forward", _forward_for_grad, mutates_args=())


@wkv7_forward.register_fake
def _(r, log_w, k, v, a, b, state, tiling):
    B, T, H, N = k.shape
    cd = compute_dtype(r, log_w, k, v, a, b, state)
    return (
        torch.empty_like(v),
        k.new_empty(B, H, N, N, dtype=cd),
        k.new_empty(B, T, H, N, dtype=cd),
        k.new_empty(B, H, triton.cdiv(T, Tiling.from_list(tiling).stretch), N, N, dtype=cd),
    )


def _backward(
    gy: torch.Tensor,
    gstate: torch.Tensor | None,
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    sa: torch.Tensor,
    kept: torch.Tensor,
    tiling: Tiling,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dr, dlog_w, dk, dv, da, db (B, T, H, N) in their inputs' dtypes and the initial state's gradient
    (B, H, N, N) in the compute dtype ((0,) without an initial state)."""
    gy, r, log_w, k, v, a, b = (x.contiguous() for x in (gy, r, log_w, k, v, a, b))
    gstate = None if gstate is None else gstate.contiguous()
    B, T, H, N = k.shape
    if kept.shape[2] != triton.cdiv(T, tiling.stretch):  # the kept states' layout is the forward's stretch
        raise ValueError(
            f"wkv7 backward: {kept.shape[2]} kept states for T = {T} do not match the tiling's stretch "
            f"{tiling.stretch}; the backward must use its forward's tiling"
        )
    cd = sa.dtype
    bv = min(tiling.rows_bwd, N)
    n_blocks = N // bv
    sums = STORE if n_blocks == 1 else PARTIAL if tiling.partials else ATOMIC
    # the key-side gradients: stored whole (STORE), added into fp32 (fp64) zeros (ATOMIC), or one fp32 (fp64) copy
    # per row block (PARTIAL), added here
    inputs = (r, log_w, k, a, b)
    shape = {STORE: None, ATOMIC: (B, T, H, N), PARTIAL: (n_blocks, B, T, H, N)}[sums]
    if sums == STORE:
        key_grads = [torch.empty_like(x) for x in inputs]
    elif sums == ATOMIC:
        key_grads = [torch.zeros(shape, device=k.device, dtype=cd) for _ in inputs]
    else:
        key_grads = [torch.empty(shape, device=k.device, dtype=cd) for _ in inputs]
    dr, dw, dk, da, db = key_grads
    dv = torch.empty_like(v)
    dstate = torch.empty(B, H, N, N, device=k.device, dtype=cd)
    gkept, stretches = None, 1
    if tiling.parallel:  # dL/dS at each stretch's end first, then the stretches side by side
        gkept, stretches = torch.empty_like(kept), kept.shape[2]
        _wkv7_bwd_carry[(n_blocks, H, B)](
            r, log_w, a, b, gy, gstate, gkept, dstate, T, H, N=N, BV=bv, STRETCH=tiling.stretch,
            HAS_GSTATE=gstate is not None, DT=tl_dtype(cd), num_warps=tiling.warps_bwd,
        )  # fmt: skip
    _wkv7_bwd[(n_blocks * stretches, H, B)](
        r,
        log_w,
        k,
        v,
        a,
        b,
        gy,
        sa,
        kept,
        gstate,
        gkept,
        dr,
        dw,
        dk,
        dv,
        da,
        db,
        dstate,
        T,
        H,
        B * T * H * N if sums == PARTIAL else 0,
        N=N,
        BV=bv,
        STRETCH=tiling.stretch,
        HAS_GSTATE=gstate is not None,
        SUMS=sums,
        DT=tl_dtype(cd),
        PARALLEL=tiling.parallel,
        num_warps=tiling.warps_bwd,
    )
    if sums == PARTIAL:
        key_grads = [g.sum(0) for g in key_grads]
    if sums != STORE:
        dr, dw, dk, da, db = (g.to(x.dtype) for g, x in zip(key_grads, inputs))
    return dr, dw, dk, dv, da, db, dstate if state is not None else dstate.new_empty(0)


def _backward_op(
    gy: torch.Tensor,
    gstate: torch.Tensor | None,
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    sa: torch.Tensor,
    kept: torch.Tensor,
    tiling: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """_backward at a tiling given as Tiling.as_list() (the custom operator's schema)."""
    return _backward(gy, gstate, r, log_w, k, v, a, b, state, sa, kept, Tiling.from_list(tiling))


wkv7_backward = torch.library.custom_op("rwkv_lab::wkv7_backward", _backward_op, mutates_args=())


@wkv7_backward.register_fake
def _(gy, gstate, r, log_w, k, v, a, b, state, sa, kept, tiling):
    B, _, H, N = k.shape
    return (
        *(torch.empty_like(x) for x in (r, log_w, k, v, a, b)),
        sa.new_empty((B, H, N, N) if state is not None else (0,)),
    )


def _setup_context(ctx, inputs, output):
    r, log_w, k, v, a, b, state, tiling = inputs
    _, _, sa, kept = output
    ctx.has_state = state is not None
    ctx.tiling = list(tiling)
    ctx.save_for_backward(r, log_w, k, v, a, b, state, sa, kept)
    # an output without a gradient stays None: the backward then starts from no final-state gradient
    ctx.set_materialize_grads(False)


def _gradients(backward, ctx, gy, gstate):
    r, log_w, k, v, a, b, state, sa, kept = ctx.saved_tensors
    gy = torch.zeros_like(v) if gy is None else gy
    grads = backward(gy, gstate, r, log_w, k, v, a, b, state, sa, kept, ctx.tiling)
    return (*grads[:6], grads[6] if ctx.has_state else None)


def _op_backward(ctx, gy, gstate, _gsa, _gkept):
    return (*_gradients(wkv7_backward, ctx, gy, gstate), None)  # None: the tiling


wkv7_forward.register_autograd(_op_backward, setup_context=_setup_context)


class EagerWKV7(torch.autograd.Function):
    """The operator outside torch.compile: the same launches and gradients as wkv7_forward's registered backward,
    without the custom operator's dispatch."""

    @staticmethod
    def forward(ctx, r, log_w, k, v, a, b, state, tiling: Tiling):
        y, final, sa, kept = _forward(r, log_w, k, v, a, b, state, tiling)
        _setup_context(ctx, (r, log_w, k, v, a, b, state, tiling.as_list()), (y, final, sa, kept))
        return y, final

    @staticmethod
    def backward(ctx, gy, gstate):
        return (*_gradients(_backward_op, ctx, gy, gstate), None)


def wkv7_triton(r, log_w, k, v, a, b, state=None, tiling: Tiling = DEFAULT):
    """The kernel backend: same signature and results as wkv7_recurrent (y in v's dtype, the state fp32, or fp64
    for fp64 inputs), at `tiling` (forward and backward). Without a gradient to take it keeps nothing for a
    backward."""
    if not isinstance(tiling, Tiling):
        raise TypeError(f"wkv7_triton: tiling must be a triton_kernels.Tiling; got {type(tiling).__name__}")
    cd = compute_dtype(r, log_w, k, v, a, b, state)
    state = None if state is None else state.to(cd)
    inputs = (r, log_w, k, v, a, b, state)
    if torch.compiler.is_compiling():
        return wkv7_forward(*inputs, tiling.as_list())[:2]
    if not (torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)):
        return _forward(*inputs, tiling, save=False)[:2]
    return EagerWKV7.apply(*inputs, tiling)
