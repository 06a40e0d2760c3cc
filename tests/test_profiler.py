"""The memory/speed profiler: the analytic model against hand-computed numbers, a live sweep on tiny configs on the
CPU, out-of-memory as a data point, chunked prefill exactness, and the readers of a sweep."""

import types

import pandas as pd
import pytest
import torch
from helpers import TOL, assert_rel_close, random_model, random_state

from rwkv_lab.measure import memory
from rwkv_lab.measure.memory import analytic_memory
from rwkv_lab.measure.profiler import (
    generation_series,
    measure_prefill,
    rwkv_subject,
    sequence_memory,
    series,
    sweep,
    transformer_subject,
)
from rwkv_lab.measure.report import crossover, memory_ratio_table, oom_contexts
from rwkv_lab.models import architecture
from rwkv_lab.models.rwkv4.config import RWKVConfig, get_config
from rwkv_lab.models.transformer.model import pythia_model

TINY = RWKVConfig(n_layer=2, n_embd=32, vocab_size=300, name="t")


def tiny_pair():
    r = rwkv_subject(random_model(TINY, dtype=torch.float32), "rwkv")
    t = transformer_subject(
        pythia_model(
            "pythia-160m",
            torch.float32,
            "cpu",
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=128,
            vocab_size=300,
        ),
        "gpt",
    )
    return r, t


def test_analytic_memory_matches_hand_computed_numbers():
    cfg = get_config("169M")
    n = cfg.n_params  # 169,342,464
    state = 5 * 768 * 12 * 4  # RWKV-4: 5 C L fp32 numbers per sequence
    rwkv = analytic_memory(n, 2, cfg.n_embd, cfg.vocab_size, batch=2, context=10**6, state_bytes=state)
    assert rwkv["weights_bytes"] == 338_684_928
    assert rwkv["cache_bytes"] == 2 * state == 368_640  # independent of the context
    kv = 2 * 12 * 768 * 2  # GPT-NeoX 160m: a key and a value of d per layer and token, bf16
    gpt = analytic_memory(162_322_944, 2, 768, 50304, batch=1, context=1000, cache_bytes_per_token=kv)
    assert gpt["cache_bytes"] == 2 * 12 * 1000 * 768 * 2 == 36_864_000
    assert gpt["held_bytes"] == 2 * 162_322_944 + 36_864_000
    assert gpt["prefill_peak_bytes"] == gpt["held_bytes"] + 1000 * 12 * 768 * 2 + 50304 * 4


@pytest.mark.parametrize("arch_name", ["rwkv4", "rwkv7"])
def test_state_bytes_are_the_state_objects_bytes(arch_name):
    """A recurrent model's `state_bytes` (its config's state_numbers in the state's dtype: RWKV-4's 5 C L,
    RWKV-7's L (2C + H N N)) against the bytes of the state object init_state allocates, per sequence, in fp32
    and float64 and for a batch."""
    arch = architecture(arch_name)
    for dtype in (torch.float32, torch.float64):
        model = arch.build(arch.get_config("tiny")).to(dtype)
        for batch in (1, 3):
            state = model.init_state(batch)
            real = sum(t.nbytes for t in state.tensors())
            print(f"{arch_name} tiny {dtype}: state_bytes {model.state_bytes}, state object {real} / {batch}")
            assert real == batch * model.state_bytes


def test_sequence_memory_at_the_pile_shapes():
    """Bytes per sequence at the released Pile 168M / 169M / 160m shapes (models on the meta device): each by its
    formula, the state objects' bytes equal to the models' state_bytes, and where the KV cache passes each."""
    pile = sequence_memory(["rwkv7:pile-168M", "rwkv4:169M", "transformer:pythia-160m"]).set_index("model")
    print(pile)
    L, C, H, N = 12, 768, 12, 64
    assert pile.loc["RWKV-7 pile-168M", "state_bytes"] == L * (2 * C + H * N * N) * 4 == 2_433_024
    assert pile.loc["RWKV-4 169M", "state_bytes"] == 5 * C * L * 4
    assert (pile["state_bytes"] == pile["state_object_bytes"]).all()
    assert pile.loc["pythia-160m", "cache_bytes_per_token"] == 2 * 12 * 768 * 2
    # the KV cache equals RWKV-7's state at 2,433,024 / 36,864 = 66 tokens, and passes it at 67
    assert pile.loc["RWKV-7 pile-168M", "kv_cache_outgrows_state_at"] == 2_433_024 // 36_864 + 1 == 67


def test_tiny_sweep_on_the_cpu_measures_every_kind():
    rwkv7 = rwkv_subject(architecture("rwkv7").build(architecture("rwkv7").get_config("tiny")), "rwkv7")
    frame = sweep([*tiny_pair(), rwkv7], 1, [8, 32], [8, 32, 128], [8, 16], decode_steps=2, progress=False)
    assert set(frame["status"]) == {"ok"}
    counts = frame.groupby(["model", "kind"]).size()
    assert counts[("rwkv", "generation")] == 3 and counts[("gpt", "prefill")] == 2 and counts[("gpt", "training")] == 2
    assert counts[("rwkv7", "generation")] == 3 and counts[("rwkv7", "training")] == 2
    assert (frame["seconds"] > 0).all() and (frame["memory_bytes"] > 0).all()
    gen = frame[frame["kind"] == "generation"]
    assert gen["predicted_bytes"].notna().all()
    for name in ("rwkv", "rwkv7"):
        assert gen[gen["model"] == name]["predicted_bytes"].nunique() == 1  # the state does not grow
    assert (frame.loc[frame["model"] == "rwkv7", "state_bytes"] == rwkv7.model.state_bytes).all()
    gpt_pred = gen[gen["model"] == "gpt"].set_index("context")["predicted_bytes"]
    assert gpt_pred[128] - gpt_pred[32] == 2 * 2 * 96 * 32 * 4  # 2 L (dT) d bytes
    print(frame[["model", "kind", "context", "seconds", "memory_bytes", "predicted_bytes"]])


SPECS = ["rwkv4:tiny", "rwkv7:tiny", "transformer:tiny"]


def test_a_sweep_of_specs_builds_each_generation_in_turn_and_lets_it_go(monkeypatch):
    """Specs through the registry, each built when its turn comes and freed after (its decoder too, which holds
    it), every kind measured, running out of memory (here the transformer's cache past 32 tokens) a row."""
    import gc
    import weakref

    from rwkv_lab.measure import profiler

    built, real_model_at, real_extend = [], profiler.model_at, profiler.Subject.extend

    def model_at(spec, dtype, device, **kwargs):
        model = real_model_at(spec, dtype, device, **kwargs)
        built.append(weakref.ref(model))
        return model

    def extend(self, tokens, cache=None, chunk=None):
        if self.arch == "transformer" and tokens.shape[1] + (cache.get_seq_length() if cache else 0) > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real_extend(self, tokens, cache, chunk)

    monkeypatch.setattr(profiler, "model_at", model_at)
    monkeypatch.setattr(profiler.Subject, "extend", extend)
    saved = []
    frame = sweep(
        SPECS,
        1,
        [8],
        [8, 32, 64],
        [8],
        [8],
        new_tokens=2,
        decode_steps=1,
        dtype=torch.float32,
        progress=False,
        on_rows=saved.append,
    )
    print(frame[["model", "kind", "context", "status"]].to_string())
    assert list(frame["model"].unique()) == ["RWKV-4 tiny", "RWKV-7 tiny", "GPT-NeoX 2x32"]
    statuses = frame.groupby(["model", "kind"])["status"].apply(list)
    assert statuses[("RWKV-7 tiny", "generation")] == ["ok"] * 3
    assert statuses[("GPT-NeoX 2x32", "generation")] == ["ok", "ok", "oom"]  # stops at its first OOM
    assert statuses[("GPT-NeoX 2x32", "training")] == ["ok"]
    assert len(saved) == 3 * 4 and saved[-1].equals(frame)  # saved after every series
    gc.collect()
    assert len(built) == 3 and all(ref() is None for ref in built)


def test_a_time_budget_is_shared_and_what_it_skipped_is_recorded(monkeypatch):
    """A fake clock: each extend costs 10 s. The budget goes to the models in turn and, within each, to its
    series; what was not started in time is a 'skipped (time)' row at the end of its series, and a model whose
    turn comes with no time left is recorded unbuilt."""
    from rwkv_lab.measure import profiler

    clock, real_extend = {"now": 0.0}, profiler.Subject.extend

    def extend(self, *args, **kwargs):
        clock["now"] += 10.0
        return real_extend(self, *args, **kwargs)

    monkeypatch.setattr(profiler, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    monkeypatch.setattr(profiler.Subject, "extend", extend)
    kwargs = dict(new_tokens=2, decode_steps=1, dtype=torch.float32, progress=False)
    frame = sweep(SPECS, 1, [8, 16], [8, 16, 32], [8], [8, 16], seconds=400, **kwargs)
    print(frame[["model", "kind", "context", "status"]].to_string())
    assert set(frame["status"]) == {"ok", "skipped (time)"}
    for (model, kind), g in frame.groupby(["model", "kind"]):
        status = list(g["status"])
        assert status == sorted(status), (model, kind, status)  # 'ok' rows, then the skipped ones
    assert (frame.groupby("model")["status"].apply(lambda s: (s == "ok").any())).all()
    none_left = sweep(SPECS, 1, [8], [8], [8], [8], seconds=0, **kwargs)
    assert set(none_left["status"]) == {"skipped (time)"} and len(none_left) == 3 * 4
    assert set(none_left["model"]) == {"RWKV-4 tiny", "RWKV-7 tiny", "GPT-NeoX 2x32"}


def test_a_sweep_stopped_by_sigterm_records_what_it_had_not_measured(monkeypatch):
    """SIGTERM (what `timeout` sends) during a series: the sweep keeps the series it finished, records the rest of
    that model and every later model as 'skipped (time)', calls on_rows, returns, and puts the handler back."""
    import os
    import signal
    import time

    from rwkv_lab.measure import profiler

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises within this
        raise AssertionError("SIGTERM did not stop the sweep")

    monkeypatch.setattr(profiler, "measure_end_to_end", stopped)
    saved = []
    before = signal.getsignal(signal.SIGTERM)
    kwargs = dict(new_tokens=2, decode_steps=1, dtype=torch.float32, progress=False, on_rows=saved.append)
    frame = sweep(SPECS, 1, [8], [8], [8], [8], **kwargs)
    assert signal.getsignal(signal.SIGTERM) is before
    status = {(m, k): s for m, k, s in frame[["model", "kind", "status"]].itertuples(index=False)}
    first = frame["model"].iloc[0]
    assert len(frame) == 3 * 4 and set(frame["model"]) == {"RWKV-4 tiny", "RWKV-7 tiny", "GPT-NeoX 2x32"}
    assert status[first, "prefill"] == status[first, "generation"] == "ok"
    assert status[first, "generation end-to-end"] == status[first, "training"] == "skipped (time)"
    assert (frame.loc[frame["model"] != first, "status"] == "skipped (time)").all()
    assert len(saved) == 2 and len(saved[-1]) == 2  # saved after each series it finished


def test_out_of_memory_is_a_recorded_data_point(monkeypatch):
    r, _ = tiny_pair()
    real = r.extend

    def extend(tokens, cache=None, chunk=None):
        if (cache is None and tokens.shape[1] >= 64) or tokens.shape[1] >= 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real(tokens, cache, chunk)

    monkeypatch.setattr(r, "extend", extend)
    rows = series(measure_prefill, r, 1, [16, 32, 64, 128, 256], progress=False)
    assert [row["status"] for row in rows] == ["ok", "ok", "oom"]  # the series stops at its first OOM
    rows = generation_series(r, 1, [16, 32, 128, 256], decode_steps=1, progress=False)
    assert [row["status"] for row in rows] == ["ok", "ok", "oom"]
    monkeypatch.setattr(r, "extend", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not data
        series(measure_prefill, r, 1, [16], progress=False)


def test_generation_series_respects_its_time_budget():
    r, _ = tiny_pair()
    rows = generation_series(r, 1, [8, 16, 32], decode_steps=1, progress=False, max_seconds=0.0)
    assert rows[0]["status"] == "ok" and {row["status"] for row in rows[1:]} == {"skipped (time)"}


def test_generation_series_clock_starts_after_the_first_context(monkeypatch):
    """The first context carries compilation and capture: a slow first call does not use up the series' budget.
    The series reads a fake clock (a loaded CI machine must not decide the outcome): the first extend costs 100 s,
    each later one 0.1 s, against a 1 s budget; counted from the start, the budget would be gone at once."""
    from rwkv_lab.measure import profiler

    r, _ = tiny_pair()
    extend, clock = r.extend, {"now": 1000.0, "calls": 0}

    def timed_extend(*args, **kwargs):
        clock["calls"] += 1
        clock["now"] += 100.0 if clock["calls"] == 1 else 0.1  # the first call's compilation
        return extend(*args, **kwargs)

    monkeypatch.setattr(r, "extend", timed_extend)
    monkeypatch.setattr(profiler, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    rows = generation_series(r, 1, [8, 16, 32, 64], decode_steps=1, progress=False, max_seconds=1.0)
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "ok"]
    rows = generation_series(r, 1, [8, 16, 32, 64], decode_steps=1, progress=False, max_seconds=0.15)
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "skipped (time)"]  # 0.1, then 0.2 > 0.15


def test_chunked_prefill_equals_one_call():
    model = random_model(TINY, dtype=torch.float64)
    tokens = torch.randint(0, TINY.vocab_size, (2, 37))
    state = random_state(model, 2)
    full_logits, full_state = model(tokens, state)
    for chunk in (None, 1, 5, 37, 100):
        last, new_state = model.prefill(tokens, state, chunk=chunk)
        assert_rel_close(f"prefill last logits, chunk {chunk}", last, full_logits[:, -1], TOL["float64 algebra"])
        assert_rel_close(f"prefill state, chunk {chunk}", new_state, full_state, TOL["float64 algebra"])
    with pytest.raises(ValueError, match="state must have shape"):
        model.prefill(tokens, state[:1])


def test_transformer_extend_in_chunks_equals_one_call():
    _, t = tiny_pair()
    tokens = torch.randint(0, 300, (1, 40))
    one, _ = t.extend(tokens)
    chunked, cache = t.extend(tokens, chunk=7)
    assert_rel_close("GPT-NeoX chunked prefill", chunked, one, TOL["float32"])
    assert cache.get_seq_length() == 40
    t.decode(tokens[:, 0], cache)
    assert t.crop(cache, 40).get_seq_length() == 40


def test_readers_of_a_sweep():
    rows = []
    for T, r_mem, t_mem, t_status in (
        (1024, 3.0, 2.8, "ok"),
        (4096, 3.0, 3.4, "ok"),
        (16384, 3.0, 5.6, "ok"),
        (65536, 3.0, None, "oom"),
    ):
        rows.append(
            {
                "model": "R",
                "arch": "rwkv",
                "kind": "generation",
                "batch": 1,
                "context": T,
                "status": "ok",
                "memory_GiB": r_mem,
                "seconds": 0.004,
            }
        )
        rows.append(
            {
                "model": "P",
                "arch": "transformer",
                "kind": "generation",
                "batch": 1,
                "context": T,
                "status": t_status,
                "memory_GiB": t_mem,
                "seconds": 0.003 * T / 1024,
            }
        )
    frame = pd.DataFrame(rows)
    assert crossover(frame, "R", "P", "generation", "memory_GiB") == 4096
    assert crossover(frame, "R", "P", "generation", "seconds") == 4096
    table = oom_contexts(frame).set_index("model")
    assert table.loc["P", "first_oom"] == 65536 and table.loc["P", "longest_ok"] == 16384
    ratio = memory_ratio_table(frame, "R", "P").set_index("context")["transformer_over_rwkv"]
    assert ratio[16384] == pytest.approx(5.6 / 3.0) and 65536 not in ratio.index


def test_process_memory_is_read_on_the_cpu():
    import mmap

    before = memory.memory_now("cpu")
    # 64 MiB of fresh pages, touched: a tensor could reuse memory the allocator already holds from earlier tests
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(b"\1" * len(block))
    assert memory.memory_now("cpu") - before > 32 * 2**20
    memory.reset_peak("cpu")
    assert memory.memory_peak("cpu") >= memory.memory_now("cpu") - 4096
    block.close()


def test_transformer_prefill_chunks_shrink_to_fit_their_attention():
    """The transformer is prefilled as a server would: each chunk's attention (heads x chunk x cached + chunk) fits
    in a share of the free memory, so the KV cache, not the harness's transients, bounds its context."""
    from rwkv_lab.measure.profiler import ATTENTION_SHARE, attention_chunk

    free, heads = 8 * 2**30, 16
    assert attention_chunk(16384, 0, heads, torch.bfloat16, "cuda", free_bytes=free) == 16384  # causal: flash
    for cached in (4096, 262144, 1 << 20):
        c = attention_chunk(16384, cached, heads, torch.bfloat16, "cuda", free_bytes=free)
        used = heads * c * (cached + c) * 2
        print(f"cached {cached}: chunk {c}, attention {used / 2**30:.2f} GiB of {ATTENTION_SHARE * free / 2**30:.1f}")
        assert 16 <= c <= 16384
        assert c == 16 or used <= ATTENTION_SHARE * free
        assert c == 16384 or heads * (c + 1) * (cached + c + 1) * 2 > ATTENTION_SHARE * free  # the largest that fits
    assert attention_chunk(512, 10**6, heads, torch.float32, "cpu") == 512  # the CPU: as asked


def test_the_kv_cache_limit_is_where_weights_and_cache_fill_the_card():
    """Held = weights + per-token cache x T (analytic), scaled by the worst measured/predicted ratio; the limit is
    the context where that reaches the card, whatever context the sweep's harness stopped at."""
    from rwkv_lab.measure.report import kv_cache_limits

    weights, per_token, card = 1000, 10, 100_000
    contexts = [64, 128, 256, 512]
    frame = pd.DataFrame(
        {
            "model": "gpt",
            "arch": "transformer",
            "kind": "generation",
            "batch": 1,
            "context": contexts + [1024],
            "status": ["ok"] * 4 + ["oom"],
            "predicted_bytes": [weights + per_token * t for t in contexts] + [None],
            "memory_bytes": [1.01 * (weights + per_token * t) for t in contexts] + [None],
        }
    )
    limit = kv_cache_limits(frame, card).iloc[0]
    print(limit.to_dict())
    assert limit["kv_cache_fills_memory_at"] == int((card / 1.01 - weights) / per_token)  # 9801, far past 1024
    assert limit["longest_ok"] == 512 and limit["first_oom"] == 1024 and limit["oom_from"] == "the harness"
    small_card = kv_cache_limits(frame, 10_000).iloc[0]  # fills at 890 tokens: the 1024-token OOM is the cache's
    assert small_card["kv_cache_fills_memory_at"] == 890 and small_card["oom_from"] == "the KV cache"


def test_comparisons_take_both_models_from_one_device():
    """A sweep joins files from several cards: a crossover or ratio between two models uses the card both ran on,
    refuses when they share none, and each card's limit and roofline use that card's memory and bandwidth."""
    from rwkv_lab.measure.report import kv_cache_limits, peer_summary

    def rows(model, arch, device, seconds, memory, params=10**9):
        return [
            {
                "model": model,
                "arch": arch,
                "kind": "generation",
                "batch": 1,
                "context": T,
                "status": "ok",
                "seconds": seconds(T),
                "memory_GiB": memory(T),
                "memory_bytes": memory(T) * 2**30,
                "predicted_bytes": memory(T) * 2**30,
                "tokens_per_s": 1 / seconds(T),
                "params": params,
                "device": device,
                "gpu_total_bytes": {"A": 80 * 2**30, "B": 140 * 2**30}[device],
                "copy_bandwidth_Bps": {"A": 2e12, "B": 4e12}[device],
            }
            for T in (1024, 4096, 16384)
        ]

    rwkv_a = rows("RWKV-4 1.5B", "rwkv", "A", lambda T: 0.002, lambda T: 3.0)
    pythia_b = rows("pythia-1.4b", "transformer", "B", lambda T: 0.001, lambda T: 3 + T / 4096)
    apart = pd.DataFrame(rwkv_a + pythia_b)
    with pytest.raises(ValueError, match="share no device"):
        crossover(apart, "RWKV-4 1.5B", "pythia-1.4b", "generation", "seconds")
    with pytest.raises(ValueError, match=r"on \['A'\].*on \['B'\]"):
        memory_ratio_table(apart, "RWKV-4 1.5B", "pythia-1.4b")
    # Pythia on card A too, slower there from 4096 on: the crossover is card A's, whatever card B says
    pythia_a = rows("pythia-1.4b", "transformer", "A", lambda T: 0.001 * T / 1024, lambda T: 3 + T / 2048)
    both = pd.DataFrame(rwkv_a + pythia_b + pythia_a)
    assert crossover(both, "RWKV-4 1.5B", "pythia-1.4b", "generation", "seconds") == 4096
    ratio = memory_ratio_table(both, "RWKV-4 1.5B", "pythia-1.4b").set_index("context")["transformer_over_rwkv"]
    assert ratio[16384] == pytest.approx((3 + 8) / 3)
    limits = kv_cache_limits(both).set_index("device")
    print(limits[["capacity_GiB", "kv_cache_fills_memory_at"]])
    assert limits.loc["A", "capacity_GiB"] == 80 and limits.loc["B", "capacity_GiB"] == 140
    assert limits.loc["A", "kv_cache_fills_memory_at"] == pytest.approx(2048 * 77, abs=1)  # int() of the fit
    assert limits.loc["B", "kv_cache_fills_memory_at"] == pytest.approx(4096 * 137, abs=1)
    peers = peer_summary(both, sizes=("1.5B",)).set_index("device")
    assert list(peers.index) == ["A"]  # card B has no RWKV row: no row of its own
    assert peers.loc["A", "roofline tok/s"] == pytest.approx(2e12 / 2e9)
    assert peers.loc["A", "ours tok/s"] == pytest.approx(500)


def test_a_sweeps_summary_reads_each_models_limits():
    """sweep_summary per model: bytes per sequence, generation's longest context, first OOM and first skipped,
    held memory and latency at the ends, training at its longest context; pile_profiles finds this run's files
    before the committed ones."""
    from rwkv_lab.measure.report import pile_profiles, sweep_summary

    def row(model, arch, kind, T, status, seconds=None, memory=None, tokens=None, state=0, per_token=0):
        return {
            "model": model, "arch": arch, "params": 10, "kind": kind, "batch": 1, "context": T, "status": status,
            "seconds": seconds, "memory_GiB": memory, "tokens_per_s": tokens, "state_bytes": state,
            "cache_bytes_per_token": per_token,
        }  # fmt: skip

    frame = pd.DataFrame(
        [
            row("R7", "rwkv7", "generation", 1024, "ok", 0.002, 1.0, state=400),
            row("R7", "rwkv7", "generation", 4096, "ok", 0.003, 1.0, state=400),
            row("R7", "rwkv7", "generation", 16384, "skipped (time)", state=400),
            row("R7", "rwkv7", "training", 512, "ok", 0.1, 2.0, 5120.0, state=400),
            row("P", "transformer", "generation", 1024, "ok", 0.004, 1.5, per_token=36),
            row("P", "transformer", "generation", 4096, "oom", per_token=36),
        ]
    )
    s = sweep_summary(frame).set_index("model")
    print(s.T)
    assert s.loc["R7", "state_bytes"] == 400 and s.loc["P", "cache_bytes_per_token"] == 36
    assert s.loc["R7", "gen_longest"] == 4096 and s.loc["R7", "gen_first_skipped"] == 16384
    assert s.loc["R7", "ms_per_token_shortest"] == pytest.approx(2.0) and s.loc["R7", "held_GiB_longest"] == 1.0
    assert s.loc["P", "gen_longest"] == 1024 and s.loc["P", "gen_first_oom"] == 4096
    assert s.loc["R7", "train_tokens_per_s"] == 5120.0 and s.loc["R7", "train_longest"] == 512
    assert pd.isna(s.loc["P", "train_tokens_per_s"])
    assert all(p.name.startswith("memory_profile_pile_") for p in pile_profiles())


def test_pile_profiles_prefers_this_runs_file(tmp_path, monkeypatch):
    from rwkv_lab.measure.report import pile_profiles
    from rwkv_lab.results import ENV_RESULTS, write_table

    monkeypatch.setenv(ENV_RESULTS, str(tmp_path))
    write_table(tmp_path / "profile" / "memory_profile_pile_x.csv", pd.DataFrame({"a": [1]}))
    assert tmp_path / "profile" / "memory_profile_pile_x.csv" in pile_profiles()


def test_batched_runs_summarise_each_mixed_run_with_the_step_that_ran(tmp_path):
    """Every generation table with mixed-prompt rows is summarised, labelled by its decoder check (compiled or
    fallen back); a table without mixed rows is passed over; none at all gives an empty frame."""
    from rwkv_lab.measure.report import batched_runs
    from rwkv_lab.results import write_json, write_table

    assert batched_runs(tmp_path).empty
    base = {"arch": "rwkv7", "size": "pile-168M", "kind": "mixed", "prompt": "16-1024"}
    call = "rwkv_lab.generate, mixed prompts (top-p)"
    rows = [
        base
        | {"batch": 32, "path": call, "tokens_per_s": 900.0, "end_to_end_tokens_per_s": 700.0}
        | {"prefill_s": 0.1, "total_s": 6.0},
        base | {"batch": 32, "path": "decoder.step (top-p)", "tokens_per_s": 1000.0},
        base | {"batch": 32, "path": "prefill_prompts, one pass", "tokens_per_s": 5e4},
        base | {"batch": 32, "path": "prefill_prompts, one prompt at a time", "tokens_per_s": 1e4},
        base | {"batch": 33, "path": "rwkv_lab.generate, first call at a new batch size", "first_call_s": 0.2},
    ]
    for tag, compiled in (("_a", "step+sample"), ("_b", False)):
        write_table(tmp_path / f"generation{tag}.csv", pd.DataFrame(rows))
        write_json(tmp_path / f"decoder_check{tag}.json", {"compiled": compiled})
    write_table(tmp_path / "generation_c.csv", pd.DataFrame([base | {"kind": "generation", "batch": 1}]))
    # a run without a decoder check (--no-check): the level its decoder recorded, and no claim of a fallback
    unchecked = [r | {"decoder_compiled": False} if "decoder.step" in r["path"] else r for r in rows]
    write_table(tmp_path / "generation_d.csv", pd.DataFrame(unchecked))
    runs = batched_runs(tmp_path)
    assert runs["file"].tolist() == ["generation_a.csv", "generation_b.csv", "generation_d.csv"]
    no_check = "uncompiled (no decoder check in its run)"
    assert runs["step"].tolist() == ["compiled (step+sample)", "uncompiled (fell back)", no_check]
    assert runs["end to end / decoder"].tolist() == [0.7, 0.7, 0.7]
    assert runs["new batch size, first call s (max)"].tolist() == [0.2, 0.2, 0.2]
    assert runs["end to end / decoder, ceiling"].isna().all()  # no prefill floor measured in these runs
    # with it: the call's 4,096 tokens over the floor (0.5 s) and 4,064 decoding steps at the decoder's 1,000 tok/s
    measured = [r | {"generated_tokens": 4096} if r["path"] == call else r for r in rows]
    measured[2] = measured[2] | {"prefill_floor_s": 0.5}
    write_table(tmp_path / "generation_e.csv", pd.DataFrame(measured))
    ceiling = batched_runs(tmp_path).set_index("file").loc["generation_e.csv", "end to end / decoder, ceiling"]
    assert ceiling == pytest.approx(4096 / (0.5 + 4064 / 1000) / 1000)


def test_kernel_shares_gives_each_kernels_milliseconds_and_share_of_the_call(monkeypatch):
    """The benchmarks' kernel tables (bench_training --profile, bench_wkv7 --profile) from torch.profiler's events,
    here stand-ins: microseconds to milliseconds, shares of the call's device time summing to 1."""
    from rwkv_lab.measure import timing

    events = [types.SimpleNamespace(key="k" * 120, count=3, device_time_total=750.0)]
    events.append(types.SimpleNamespace(key="small", count=1, device_time_total=250.0))
    monkeypatch.setattr(timing, "cuda_kernels", lambda fn, device: events)
    rows = timing.kernel_shares(lambda: None)
    assert [r["kernel"] for r in rows] == ["k" * 100, "small"]
    assert [(r["calls"], r["ms"], r["share"], r["device_ms"]) for r in rows] == [
        (3, 0.75, 0.75, 1.0),
        (1, 0.25, 0.25, 1.0),
    ]
