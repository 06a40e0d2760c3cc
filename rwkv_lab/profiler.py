"""Memory and speed of RWKV-4 against a transformer across context lengths, measured beside an analytic model.

    rwkv = rwkv_subject(model)                       # our RWKV (CUDA graphs for decoding on a GPU)
    gpt = transformer_subject(pythia_model("pythia-1.4b", "bfloat16", "cuda"))
    frame = sweep([rwkv, gpt], prefill_contexts=[512, 1024], generation_contexts=[1024, 2**20], batch=1)

Three measurements per context T (rows of a tidy DataFrame, `kind` = prefill | generation | training):
- prefill: one parallel forward over T tokens, no grad, only the last position's logits (as a server prefills):
  time, tokens/s, peak memory;
- generation after a context of T tokens: the memory held (weights + RWKV state, or weights + KV cache) and the
  per-token latency of decoding from there. The context is built incrementally, in chunks, so a 1M-token sweep
  costs one pass over 1M tokens;
- training: forward + backward under bf16 autocast (fp32 on the CPU): peak memory and tokens/s.
Each row carries `predicted_bytes` from `analytic_memory` and `measured/predicted`. Out-of-memory is a row
(status 'oom'); a series stops at its first OOM, since longer contexts only need more. On the CPU, memory is the
process's resident set (peak: VmHWM, reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import csv
import gc
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .bench import is_oom, time_fn
from .model import RWKV

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
PYTHIA_FOR = {"169M": "pythia-160m", "430M": "pythia-410m", "1.5B": "pythia-1.4b", "3B": "pythia-2.8b",
              "7B": "pythia-6.9b", "14B": "pythia-12b"}
TRAIN_AUTOCAST = torch.bfloat16


# ---- memory, on either device ----------------------------------------------------------------------------------

def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_now(device) -> int:
    """Bytes held: the CUDA caching allocator's allocated bytes, or the process's resident set on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status("VmRSS")


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


def memory_peak(device) -> int:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status("VmHWM")


def free_memory(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ---- the analytic model ----------------------------------------------------------------------------------------

def analytic_memory(arch: str, n_params: int, n_layer: int, d_model: int, vocab: int, batch: int, context: int,
                    dtype_bytes: int, state_bytes: int = 4) -> dict:
    """Bytes by the formulas: weights N·s; RWKV state 5·C·L per sequence (fp32); KV cache 2·L·T·d per sequence;
    the prefill's transient activations, O(B·T·C), of which the largest live set is about the FFN's 4C hidden
    plus a few C-wide tensors (12 C per token, in the compute dtype) and the last position's logits."""
    weights = n_params * dtype_bytes
    if arch == "rwkv":
        cache = batch * 5 * d_model * n_layer * state_bytes
    else:
        cache = batch * 2 * n_layer * context * d_model * dtype_bytes
    activations = batch * context * 12 * d_model * dtype_bytes + batch * vocab * 4
    return {"weights_bytes": weights, "cache_bytes": cache, "held_bytes": weights + cache,
            "prefill_peak_bytes": weights + cache + activations}


# ---- the two kinds of model behind one interface ---------------------------------------------------------------

@dataclass
class Subject:
    """A model with prefill / extend / decode over its own cache (RWKV state or transformers KV cache)."""

    name: str
    arch: str  # 'rwkv' | 'transformer'
    model: torch.nn.Module
    n_layer: int
    d_model: int
    vocab: int
    graphs: bool = False  # decode through a captured CUDA graph (RWKV on CUDA)
    compile: bool = False  # ... of the torch.compile'd step: its elementwise work fused into a few kernels
    _graph: dict = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def predicted(self, batch: int, context: int) -> dict:
        return analytic_memory(self.arch, self.n_params, self.n_layer, self.d_model, self.vocab, batch, context,
                               self.dtype.itemsize)

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, cache=None, chunk: int | None = None):
        """Run a context (B, T) from `cache` (None: empty); returns (last logits (B, V), cache)."""
        if self.arch == "rwkv":
            return self.model.prefill(tokens, cache, chunk=chunk, check=False)
        from transformers import DynamicCache

        cache = cache if cache is not None else DynamicCache()
        chunk = chunk or tokens.shape[1]
        for start in range(0, tokens.shape[1], chunk):
            out = _hf(self.model, input_ids=tokens[:, start : start + chunk], past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
        return out.logits[:, -1], cache

    @torch.no_grad()
    def decode(self, token: torch.Tensor, cache):
        """One generated token per sequence, token (B,) -> (logits (B, V), cache)."""
        if self.arch == "rwkv":
            if self.graphs and self.device.type == "cuda":
                return self._graphed_step(token, cache)
            return self.model.step(token, cache, check=False)
        out = _hf(self.model, input_ids=token[:, None], past_key_values=cache, use_cache=True)
        return out.logits[:, -1], out.past_key_values

    def _graphed_step(self, token, state):
        """model.step replayed from a CUDA graph: one launch per token instead of hundreds (launch-bound at B=1)."""
        key = tuple(state.shape)
        if key not in self._graph:
            step = lambda t, s: self.model.step(t, s, check=False)  # noqa: E731
            if self.compile:
                step = torch.compile(step, fullgraph=True, dynamic=False)
            static_token, static_state = token.clone(), state.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up outside the graph (allocator, kernels' first launch, compilation)
                    step(static_token, static_state)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits, new_state = step(static_token, static_state)
            self._graph[key] = (graph, static_token, static_state, logits, new_state)
        graph, static_token, static_state, logits, new_state = self._graph[key]
        static_token.copy_(token)
        static_state.copy_(state)
        graph.replay()
        return logits, new_state

    def crop(self, cache, context: int):
        """The cache as it was after `context` tokens (transformer; an RWKV state is returned as is)."""
        if self.arch == "transformer" and cache.get_seq_length() > context:
            cache.crop(context - cache.get_seq_length())  # negative: remove that many (transformers 4.x and 5.x)
        return cache

    def training_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        x, y = tokens[:, :-1], tokens[:, 1:]
        with torch.autocast("cuda", dtype=TRAIN_AUTOCAST, enabled=self.device.type == "cuda"):
            logits = self.model(x, check=False)[0] if self.arch == "rwkv" else self.model(input_ids=x).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def _hf(model, **kwargs):
    # transformers 5.2x renames past_key_values to cache; the old name works in every version we meet
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*")
        return model(**kwargs)


def rwkv_subject(model: RWKV, name: str | None = None, graphs: bool = True, compile: bool = False) -> Subject:
    cfg = model.config
    return Subject(name or f"RWKV-4 {cfg.name}", "rwkv", model.eval(), cfg.n_layer, cfg.n_embd, cfg.vocab_size,
                   graphs=graphs, compile=compile)


def transformer_subject(model, name: str | None = None) -> Subject:
    cfg = model.config
    return Subject(name or f"GPT-NeoX {cfg.num_hidden_layers}x{cfg.hidden_size}", "transformer", model.eval(),
                   cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size)


def pythia_configs() -> dict[str, dict]:
    with open(REFERENCE_DIR / "pythia_configs.csv") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def gpt_neox(n_layer: int, d_model: int, vocab: int, n_heads: int, max_positions: int = 2048, **overrides):
    """A Pythia-style GPTNeoXForCausalLM config (rotary on a quarter of each head, parallel residual, untied
    embeddings, SDPA attention); `overrides` replace fields."""
    from transformers import GPTNeoXConfig

    fields = dict(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layer,
                  num_attention_heads=n_heads, intermediate_size=4 * d_model, rotary_pct=0.25,
                  max_position_embeddings=max_positions, use_parallel_residual=True, tie_word_embeddings=False,
                  attn_implementation="sdpa")
    return GPTNeoXConfig(**(fields | overrides))


def pythia_model(name: str, dtype=torch.bfloat16, device="cpu", max_positions: int = 2048, **overrides):
    """A Pythia-shaped GPTNeoXForCausalLM (reference/pythia_configs.csv) with random weights and SDPA attention.
    `overrides` replace config fields (tests shrink it); rotary positions extend past the trained 2048."""
    from transformers import GPTNeoXForCausalLM

    row = pythia_configs()[name]
    config = gpt_neox(int(row["n_layer"]), int(row["d_model"]), int(row["vocab_size_padded"]), int(row["n_heads"]),
                      max_positions, **overrides)
    with torch.device(device):
        model = GPTNeoXForCausalLM(config).to(dtype)
    return model.eval()


def real_rwkv(size: str, dtype=torch.bfloat16, device="cuda") -> RWKV:
    """A released size with random weights of the official scale, built on the device (seconds at 7B)."""
    from .config import get_config
    from .model import init_weights

    with torch.device(device):
        model = RWKV(get_config(size))
    init_weights(model, zero_projections=False, orthogonal_matrices=False)
    return model.to(dtype).eval()


def pair_subjects(size: str, dtype=torch.bfloat16, device="cuda", compile: bool = False):
    """RWKV-4 `size`, then its Pythia match, built one after the other (each freed before the next is built)."""
    model = real_rwkv(size, dtype, device)
    yield rwkv_subject(model, f"RWKV-4 {size}" + (" compiled" if compile else ""), compile=compile)
    del model
    free_memory(device)
    yield transformer_subject(pythia_model(PYTHIA_FOR[size], dtype, device, max_positions=2**21), PYTHIA_FOR[size])


# ---- measuring -------------------------------------------------------------------------------------------------

def _time(fn, device, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    return time_fn(fn, device, warmup=1, repeat=repeat)


def _tokens(subject: Subject, batch: int, T: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, min(subject.vocab, 50277), (batch, T), generator=gen).to(subject.device)


def _row(subject: Subject, kind: str, batch: int, T: int) -> dict:
    return {"model": subject.name, "arch": subject.arch, "params": subject.n_params, "dtype": str(subject.dtype)[6:],
            "kind": kind, "batch": batch, "context": T}


def measure_prefill(subject: Subject, batch: int, T: int, repeat: int = 3) -> dict:
    row = _row(subject, "prefill", batch, T)
    tokens = _tokens(subject, batch, T, seed=T)
    predicted = subject.predicted(batch, T)["prefill_peak_bytes"]
    free_memory(subject.device)
    before = memory_now(subject.device)
    reset_peak(subject.device)
    seconds = _time(lambda: subject.extend(tokens), subject.device, repeat)
    peak = _weight_bytes(subject) + memory_peak(subject.device) - before  # weights + what the call added
    return row | {"status": "ok", "seconds": seconds, "tokens_per_s": batch * T / seconds, "memory_bytes": peak,
                  "predicted_bytes": predicted}


def measure_training(subject: Subject, batch: int, T: int, repeat: int = 3) -> dict:
    row = _row(subject, "training", batch, T)
    tokens = _tokens(subject, batch, T + 1, seed=T)
    subject.model.train()

    def step():
        subject.training_loss(tokens).backward()
        for p in subject.model.parameters():
            p.grad = None

    try:
        free_memory(subject.device)
        before = memory_now(subject.device)
        reset_peak(subject.device)
        seconds = _time(step, subject.device, repeat)
        peak = _weight_bytes(subject) + memory_peak(subject.device) - before
    finally:
        subject.model.eval()
    return row | {"status": "ok", "seconds": seconds, "tokens_per_s": batch * T / seconds, "memory_bytes": peak}


def generation_series(subject: Subject, batch: int, contexts, decode_steps: int = 16, chunk: int = 16384,
                      progress: bool = True, max_seconds: float | None = None) -> list[dict]:
    """Build the context up incrementally through `contexts` (sorted) and, at each, measure the memory held and
    the latency of decoding `decode_steps` tokens. Stops at the first OOM (recorded), or once the series has run
    `max_seconds` (at least one context is measured; the rest are recorded as 'skipped (time)')."""
    rows, cache, built, t0 = [], None, 0, time.perf_counter()
    stream = _tokens(subject, batch, max(contexts), seed=1)
    free_memory(subject.device)
    # held = weights + what building the context added (on the CPU the resident set also holds the interpreter)
    base = memory_now(subject.device) - _weight_bytes(subject)
    for T in tqdm(sorted(contexts), desc=f"generation {subject.name} B={batch}", disable=not progress):
        row = _row(subject, "generation", batch, T)
        if rows and max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            rows.append(row | {"status": "skipped (time)"})
            continue
        try:
            logits, cache = subject.extend(stream[:, built:T], cache, chunk=max(1, chunk // batch))
            built = T
            token = logits.argmax(-1)

            def run():
                c, tok = cache, token
                for _ in range(decode_steps):
                    out, c = subject.decode(tok, c)
                    tok = out.argmax(-1)
                subject.crop(c, T)  # a transformer's cache grew in place

            seconds = _time(run, subject.device, repeat=3) / decode_steps
            free_memory(subject.device)
            held = memory_now(subject.device) - base  # after decoding: a CUDA graph's pool counts as held
            rows.append(row | {"status": "ok", "seconds": seconds, "tokens_per_s": batch / seconds,
                               "memory_bytes": held, "predicted_bytes": subject.predicted(batch, T)["held_bytes"]})
        except (torch.cuda.OutOfMemoryError, RuntimeError, MemoryError) as err:
            if not (isinstance(err, MemoryError) or is_oom(err)):
                raise
            rows.append(row | {"status": "oom"})
            break
    del cache
    free_memory(subject.device)
    return rows


def _weight_bytes(subject: Subject) -> int:
    return sum(p.numel() * p.element_size() for p in subject.model.parameters())


def series(measure, subject: Subject, batch: int, contexts, progress: bool = True, **kwargs) -> list[dict]:
    """measure(subject, batch, T) for each T, stopping at the first OOM (recorded as a row)."""
    rows = []
    for T in tqdm(sorted(contexts), desc=f"{measure.__name__.removeprefix('measure_')} {subject.name} B={batch}",
                  disable=not progress):
        try:
            rows.append(measure(subject, batch, T, **kwargs))
        except (torch.cuda.OutOfMemoryError, RuntimeError, MemoryError) as err:
            if not (isinstance(err, MemoryError) or is_oom(err)):
                raise
            free_memory(subject.device)
            rows.append(_row(subject, measure.__name__.removeprefix("measure_"), batch, T) | {"status": "oom"})
            break
    return rows


def sweep(subjects, batch: int = 1, prefill_contexts=(), generation_contexts=(), training_contexts=(),
          decode_steps: int = 16, progress: bool = True) -> pd.DataFrame:
    rows = []
    for subject in subjects:
        rows += series(measure_prefill, subject, batch, prefill_contexts, progress)
        rows += generation_series(subject, batch, generation_contexts, decode_steps, progress=progress) \
            if generation_contexts else []
        rows += series(measure_training, subject, batch, training_contexts, progress)
    return finish(pd.DataFrame(rows))


def finish(frame: pd.DataFrame) -> pd.DataFrame:
    """Add GiB and measured/predicted columns."""
    for col in ("seconds", "tokens_per_s", "memory_bytes", "predicted_bytes"):
        if col not in frame:
            frame[col] = math.nan
    frame["memory_GiB"] = frame["memory_bytes"] / 2**30
    frame["measured_over_predicted"] = frame["memory_bytes"] / frame["predicted_bytes"]
    return frame


def memory_ratio_table(frame: pd.DataFrame, rwkv: str, transformer: str, batch: int = 1) -> pd.DataFrame:
    """At each context both reached: generation memory held by the transformer / by RWKV."""
    gen = frame[(frame["kind"] == "generation") & (frame["status"] == "ok") & (frame["batch"] == batch)]
    a = gen[gen["model"] == rwkv].set_index("context")["memory_GiB"]
    b = gen[gen["model"] == transformer].set_index("context")["memory_GiB"]
    both = pd.DataFrame({"rwkv_GiB": a, "transformer_GiB": b}).dropna()
    both["transformer_over_rwkv"] = both["transformer_GiB"] / both["rwkv_GiB"]
    return both.reset_index()


# ---- reading a sweep (notebook 02) -----------------------------------------------------------------------------

def load_profiles(paths) -> pd.DataFrame:
    """Concatenate profile CSVs, each row tagged with its file's device (from <name>.meta.json)."""
    frames = []
    for path in paths:
        meta = pd.read_json(Path(path).with_suffix(".meta.json"), typ="series")
        frames.append(pd.read_csv(path).assign(device=meta["device"], source=Path(path).name))
    return pd.concat(frames, ignore_index=True)


def oom_contexts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model, kind and batch: the longest context measured and the first that ran out of memory."""
    rows = []
    for (model, kind, batch), g in frame.groupby(["model", "kind", "batch"], sort=False):
        ok, oom = g[g["status"] == "ok"], g[g["status"] == "oom"]
        rows.append({"model": model, "kind": kind, "batch": batch,
                     "longest_ok": int(ok["context"].max()) if len(ok) else None,
                     "first_oom": int(oom["context"].min()) if len(oom) else None})
    return pd.DataFrame(rows)


def crossover(frame: pd.DataFrame, rwkv: str, transformer: str, kind: str, value: str, batch: int = 1,
              lower_is_better: bool = True):
    """The shortest context from which RWKV is better on `value` than the transformer (None if never)."""
    g = frame[(frame["kind"] == kind) & (frame["status"] == "ok") & (frame["batch"] == batch)]
    a = g[g["model"] == rwkv].set_index("context")[value]
    b = g[g["model"] == transformer].set_index("context")[value]
    both = pd.DataFrame({"r": a, "t": b}).dropna().sort_index()
    better = both["r"] < both["t"] if lower_is_better else both["r"] > both["t"]
    # from this context on, RWKV stays better
    for T in both.index:
        if better.loc[T:].all():
            return int(T)
    return None


def plot_kind(frame: pd.DataFrame, ax, kind: str, value: str, ylabel: str, batch: int = 1, scale: float = 1.0):
    """One line per model: `value` (times `scale`) against context, log-log; OOM marked with an x."""
    g = frame[(frame["kind"] == kind) & (frame["batch"] == batch)]
    for model, m in g.groupby("model", sort=False):
        ok = m[m["status"] == "ok"].sort_values("context")
        style = "-" if m["arch"].iloc[0] == "rwkv" else "--"
        (line,) = ax.loglog(ok["context"], ok[value] * scale, "o" + style, ms=3, label=model)
        for T in m.loc[m["status"] == "oom", "context"]:
            ax.plot([T], [ok[value].iloc[-1] * scale if len(ok) else 1], "x", color=line.get_color(), ms=9, mew=2)
    ax.set_xlabel("context T (tokens)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
