"""The GPU correctness checks as tests (`make test-gpu`, `pytest -m gpu`): each runs a benchmark's check at a size
that fits a few minutes in all, writes its results file (rwkv_lab.results, under results/gpu_checks/ so the
full-size files under results/ stay as they are) and asserts the named relative errors against the tolerances of
the CPU tests (helpers.TOL). Without a GPU they are skipped (tests/conftest.py says so in one line).

    benchmarks/check_fused.py         fused vs eager blocks (RWKV-4, RWKV-7): a training step, the loss, a prefill
    benchmarks/check_norm_mix.py      LayerNorm + shift + mix kernels vs float64
    benchmarks/check_cuda_graph.py    the trainer's graphed step vs its eager step, and resumed
    benchmarks/bench_wkv.py's kernel check (--check-only), short cases    the Triton WKV vs float64
    benchmarks/bench_wkv7.py's kernel check (--check-only --quick)        RWKV-7's Triton kernel vs float64
    benchmarks/bench_wkv7_prefill.py (T = 1000, 4096)   RWKV-7's forward-only backends (prefill) vs float64
    benchmarks/bench_generation.py's decoder_check  the captured, compiled decode step vs model.step (both
                                                    generations; RWKV-7's through its step kernels)

The summaries of benchmarks/bench_training.py's repeated runs are checked on the CPU at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pandas as pd
import pytest
from helpers import NEOX_TOKENIZER, REPO, TOL

GPU_CHECKS = "gpu_checks"  # the folder under results/ these tests write to


def script(name: str):
    """A benchmark script (benchmarks/ is no package) as a module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def out(monkeypatch):
    """results/gpu_checks/ (under $RWKV_LAB_RESULTS when set), made the results folder of the check."""
    from rwkv_lab.results import results_dir

    folder = results_dir() / GPU_CHECKS
    monkeypatch.setenv("RWKV_LAB_RESULTS", str(folder))
    return folder


def run_main(monkeypatch, module, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [module.__file__, *args])
    module.main()


def within(name: str, err: float, tol: float) -> None:
    """The named relative-error check on a recorded error: printed either way; NaN (None in JSON) never passes."""
    print(f"{name}: rel err {err:.3e} (tol {tol:.0e})")
    assert err is not None and err == err, f"{name}: no finite error recorded ({err})"
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"


def results_of(path) -> list[dict]:
    return json.loads(path.read_text())["results"]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "arch, size, results",
    [("rwkv4", "169M", "fused_check.json"), ("rwkv7", "byte-6x256", "fused_check_rwkv7.json")],
    ids=["rwkv4", "rwkv7"],
)
def test_fused_blocks_match_eager_blocks(monkeypatch, out, arch, size, results):
    """check_fused: the fused blocks (torch.compile around the Triton operator) against the eager blocks, a training
    step in fp32 and in bf16 autocast, the training loss, a prefill; RWKV-4 at 169M, RWKV-7 at the trained
    default's shape."""
    args = ("--arch", arch, "--sizes", size, "--context", "512", "--batch", "2")
    run_main(monkeypatch, script("check_fused"), *args)
    rows = results_of(out / "training" / results)
    for r in rows:
        label = f"{arch} {size} {r['what']}, autocast {r.get('autocast', 'fp16 weights')}"
        if r["what"] == "training step" and r["autocast"] == "none":
            for key in ("rel_err_loss", "rel_err_state", "rel_err_worst_grad"):
                within(f"{label} {key}", r[key], TOL["float32"])
        elif r["what"] == "training step":
            within(f"{label} rel_err_loss", r["rel_err_loss"], TOL["bfloat16"])
            # bf16 rounds differently in the two paths: the fused one may lose no more than twice what eager loses
            within(
                f"{label} fused vs fp32 worst grad", r["fused_vs_fp32_worst_grad"], 2 * r["eager_vs_fp32_worst_grad"]
            )
        elif r["what"].startswith("lm_loss"):
            within(f"{label} rel_err_loss", r["rel_err_loss"], TOL["float32 step"])
            within(f"{label} rel_err_worst_grad", r["rel_err_worst_grad"], TOL["bfloat16"])
        else:
            within(f"{label} rel_err_logits", r["rel_err_logits"], TOL["bfloat16"])
    assert {r["what"] for r in rows} == {
        "training step",
        "lm_loss (compiled cross-entropy) vs eager",
        "prefill logits, fp16",
    }


@pytest.mark.gpu
def test_norm_mix_kernels_match_float64(monkeypatch, out):
    module = script("check_norm_mix")
    run_main(monkeypatch, module, "--shapes", "4x512x768,2x300x2048", "--bwd-rows", str(module.kernels.BWD_ROWS))
    frame = pd.read_csv(out / "training" / "norm_mix_check.csv")
    assert len(frame) == 4  # two shapes x two halves
    for _, r in frame.iterrows():
        for key in [
            k for k in frame.columns if k.startswith("rel_err") and not (k == "rel_err_grad_mu2" and r["mixes"] < 3)
        ]:
            within(f"norm_mix {r['B']}x{r['T']}x{r['C']} {r['half']} {key}", r[key], TOL["float32 step"])


@pytest.mark.gpu
def test_cuda_graph_step_matches_eager_step(monkeypatch, out):
    # 10 steps: the resumed run (saved after 6) still takes the graph's eager warm-up steps and then captures
    args = ("--sizes", "byte-6x256", "--context", "256", "--batch", "4", "--steps", "10")
    run_main(monkeypatch, script("check_cuda_graph"), *args)
    rows = results_of(out / "training" / "cuda_graph_check.json")
    for arch in ("rwkv", "transformer"):
        runs = {r["run"]: r for r in rows if r["arch"] == arch}
        assert runs["graphed"]["captured"] and runs["graphed, resumed"]["captured"], f"{arch}: step not captured"
        for run in ("graphed", "graphed, resumed"):
            for key in ("rel_err_loss", "rel_err_worst_weight"):
                # RWKV's eager step is deterministic, and the graph replays it exactly; the transformer's eager runs
                # differ from each other (atomics in its reductions): the graph may differ as much, with room
                tol = max(TOL["float32 step"], 3 * runs["eager again"][key])
                within(f"{arch} {run} {key}", runs[run][key], tol)


@pytest.mark.gpu
def test_wkv_triton_kernel_matches_float64(out):
    import torch

    from rwkv_lab.results import write_json

    module = script("bench_wkv")
    # bench_wkv --check-only --quick's cases up to T = 63 (one chunk) and T = 300 (several chunks and the scan
    # between them); its T = 1000 and 4096 cases (and the scan kernels past T = 1024) take two minutes of float64
    # reference loops: the full check is `python benchmarks/bench_wkv.py --check-only`
    cases = [case for case in module.CHECK_CASES if case[1] < 1000] + [(2, 300, 64)]
    rows = module.check_kernel(torch.device("cuda"), quick=True, cases=cases)
    write_json(out / "wkv" / "wkv_kernel_check.json", rows, {"cases": cases, "chunk": module.wkv_triton.CHUNK})
    for r in rows:
        label = f"wkv {r['B']}x{r['T']}x{r['C']} {r['dtype']} {r['inputs']}"
        assert r["finite"], f"{label}: non-finite output or gradient"
        for key in [k for k in r if k.startswith("rel_err")]:
            if r["dtype"] != "fp32":
                tol = TOL["bfloat16"]
            elif r["inputs"] == "extreme":  # |k| up to 80: as tests/test_wkv_triton.py, 1e-4 outputs, 1e-3 grads
                tol = 1e-3 if key.startswith("rel_err_d") else TOL["float32 vs another implementation"]
            else:
                tol = TOL["float32"]
            within(f"{label} {key}", r[key], tol)


@pytest.mark.gpu
def test_wkv7_triton_kernel_matches_float64(out):
    """RWKV-7's Triton backends (the per-token kernel and the chunked kernels) vs float64 forms on the GPU
    (bench_wkv7's quick cases): outputs, state and every gradient up to T = 1000 (RWKV-7-like decays, every decay at
    the bound, bf16 inputs), the forward alone at T = 2^20 against the float64 chunked form; the tolerances of
    tests/test_wkv7_triton.py."""
    import torch

    from rwkv_lab.results import write_json

    module = script("bench_wkv7")
    rows = module.check_kernel(torch.device("cuda"), module.QUICK_CASES)
    write_json(
        out / "wkv7" / "wkv7_kernel_check.json", rows, {"cases": [list(map(str, c)) for c in module.QUICK_CASES]}
    )
    assert {r["backend"] for r in rows} == set(module.KERNELS), "a Triton backend went unchecked"
    for r in rows:
        label = f"wkv7 {r['backend']} {r['B']}x{r['T']}x{r['H']}x{r['N']} {r['dtype']} {r['case']}"
        assert r["finite"], f"{label}: non-finite output or gradient"
        for key in [k for k in r if k.startswith("rel_err")]:
            if r["dtype"] != "float32":
                tol = TOL["bfloat16"]
            elif r["case"] == "decay_at_bound" and key in ("rel_err_grad_r", "rel_err_grad_log_w", "rel_err_grad_a"):
                tol = 1e-3  # stepping back through a stretch at the strongest decay (as the CPU test)
            elif r["T"] > 100_000:
                tol = TOL["float32 vs another implementation"]  # a million fp32 steps
            else:
                tol = TOL["float32"]
            within(f"{label} {key}", r[key], tol)


@pytest.mark.gpu
def test_prefill_backends_match_float64(monkeypatch, out):
    """bench_wkv7_prefill's forward-only backends (the per-token Triton kernel, the chunked Triton kernels, the
    chunked PyTorch form) on the GPU against the float64 chunked form, fp16 inputs of RWKV-7's range at T = 1000:
    the fp32 state within float32 rounding, y within fp16's (it is returned in fp16)."""
    module = script("bench_wkv7_prefill")
    run_main(monkeypatch, module, "--batches", "1", "--lengths", "1000,4096", "--widths", "768")
    frame = pd.read_csv(out / "wkv7" / "wkv7_prefill_backends.csv")
    checked = frame[frame["T"] == 1000]
    assert set(checked["candidate"]) >= {"triton", "triton_chunked", "chunked"}, checked["candidate"].tolist()
    for _, r in checked.iterrows():
        assert "error" not in r or pd.isna(r["error"]), f"prefill {r['candidate']}: {r['error']}"
        within(f"prefill {r['candidate']} state", r["rel_err_state"], TOL["float32"])
        within(f"prefill {r['candidate']} y (fp16 out)", r["rel_err_y"], 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("overlap", [False, True], ids=["", "overlapped"])
@pytest.mark.parametrize("arch, size", [("rwkv4", "169M"), ("rwkv7", "pile-168M")])
def test_decoder_step_matches_model_step(out, arch, size, overlap):
    """The captured, compiled decode step against model.step's PyTorch reference (RWKV-7's: its step kernels off);
    `overlap`: its kernels as programmatic dependent launches or not (RunConfig.overlapped_launches)."""
    import torch

    from rwkv_lab.loading.tokenizer import ENV_TOKENIZER, load_tokenizer
    from rwkv_lab.results import write_json

    source = os.environ.get(ENV_TOKENIZER) or NEOX_TOKENIZER
    if not os.path.exists(source):
        pytest.skip(f"no GPT-NeoX tokenizer at {source} (set ${ENV_TOKENIZER} to a 20B_tokenizer.json)")
    module = script("bench_generation")
    tokenizer = load_tokenizer(str(source))
    check = module.decoder_check(arch, size, torch.device("cuda"), tokenizer, new_tokens=64, overlap=overlap)
    path = out / "inference" / f"decoder_check_{arch}{'_overlapped' * overlap}.json"
    params = {"arch": arch, "size": size, "new_tokens": 64, "launches_overlapped": overlap}
    write_json(path, check, params, device="cuda")
    if arch == "rwkv7":
        assert check["step_kernels"], "RWKV-7's decoder on CUDA runs the step kernels"
    within("decoder step vs model.step, logits (fp32)", check["rel_err_logits"], check["tolerance"])
    within("decoder step vs model.step, state (fp32)", check["rel_err_state"], check["tolerance"])
    assert check["greedy_text_identical"], "greedy text through generate differs from model.step's"
    assert check["ok"]


def test_training_speed_summary_takes_the_median_run_and_counts_the_rounds_each_side_won():
    """bench_training's --repeats: per configuration the median run with min and max; per size and context the
    rounds each side won; a configuration that never ran keeps its status. On the CPU, from made-up runs."""
    module = script("bench_training")
    base = {"arch": "x", "size": "169M", "context": 1024, "batch": 16, "tokens_per_step": 16384, "step_ms": 1.0}
    base |= {"mfu_vs_measured_peak": 0.4, "peak_mem_GiB": 10.0}
    rwkv, pythia = {"variant": "RWKV-4", "model": "169M"}, {"variant": "Pythia compiled", "model": "pythia-160m"}
    rwkv7 = {"variant": "RWKV-7", "model": "pile-168M"}
    runs = [
        base | rwkv7 | {"run": 1, "status": "ok", "tokens_per_s": 60.0},
        base | rwkv7 | {"run": 2, "status": "ok", "tokens_per_s": 99.0},
        base | rwkv | {"run": 1, "status": "ok", "tokens_per_s": 100.0},
        base | pythia | {"run": 1, "status": "ok", "tokens_per_s": 90.0},
        base | rwkv | {"run": 2, "status": "ok", "tokens_per_s": 80.0, "peak_mem_GiB": 11.0},
        base | pythia | {"run": 2, "status": "ok", "tokens_per_s": 95.0},
        base | rwkv | {"run": 3, "status": "ok", "tokens_per_s": 120.0},
        base | pythia | {"run": 3, "status": "ok", "tokens_per_s": 85.0},
        base | rwkv | {"run": 1, "status": "oom", "tokens_per_s": None, "context": 8192},
    ]
    frame = pd.DataFrame(runs)
    summary = module.summarize(frame)
    first = summary[(summary["variant"] == "RWKV-4") & (summary["context"] == 1024)].iloc[0]
    assert (first["tokens_per_s"], first["tokens_per_s_min"], first["tokens_per_s_max"]) == (100.0, 80.0, 120.0)
    assert (first["runs"], first["runs_ok"], first["peak_mem_GiB"]) == (3, 3, 11.0)
    assert summary[summary["context"] == 8192].iloc[0]["status"] == "oom"
    versus = module.versus(summary, frame)
    assert list(versus["generation"]) == ["RWKV-4", "RWKV-7", "RWKV-4"]  # RWKV-7 not run at 8192: no row
    rwkv4 = versus[versus["generation"] == "RWKV-4"].set_index("context")
    assert rwkv4.loc[1024, "speed_ratio"] == pytest.approx(100.0 / 90.0)
    assert (rwkv4.loc[1024, "rwkv_won_rounds"], rwkv4.loc[1024, "rounds_compared"]) == (2, 3)
    assert rwkv4.loc[8192, "rwkv_status"] == "oom"
    # RWKV-7's median of two runs is the slower (60), against Pythia's best path (90); it won run 2 of the 2 rounds
    rwkv7_row = versus[versus["generation"] == "RWKV-7"].iloc[0]
    assert rwkv7_row["rwkv_model"] == "pile-168M" and rwkv7_row["speed_ratio"] == pytest.approx(60.0 / 90.0)
    assert (rwkv7_row["rwkv_won_rounds"], rwkv7_row["rounds_compared"]) == (1, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["rwkv4", "rwkv7"])
def test_each_generation_runs_on_cuda_as_on_the_cpu(name, out):
    """Either generation on CUDA: the parallel form equals the CPU's in fp32, and the decoder (one captured CUDA
    graph of the compiled step and the sampler, the state object in its static buffers) gives the eager step's
    tokens and state over 16 steps. Writes results/gpu_checks/generations_<name>.json."""
    import torch
    from helpers import assert_rel_close

    from rwkv_lab.inference.decoder import Decoder, default_compile_level
    from rwkv_lab.models import architecture
    from rwkv_lab.results import write_json

    arch = architecture(name)
    config = arch.get_config("byte-4x128")
    cpu = arch.build(config, seed=3, zero_projections=False).eval()
    gpu = arch.build(config, seed=3, zero_projections=False).to("cuda").eval()
    tokens = torch.randint(0, config.vocab_size, (4, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_logits, ref_state = cpu(tokens)
        logits, state = gpu(tokens.cuda())
    errors = {
        "parallel logits, cuda vs cpu": assert_rel_close(
            "logits cuda vs cpu", logits.cpu(), ref_logits, TOL["float32"]
        ),
        "parallel state, cuda vs cpu": assert_rel_close(
            "state cuda vs cpu", state.to("cpu"), ref_state, TOL["float32"]
        ),
    }
    decoder = Decoder(gpu, batch=4)
    token, eager_token = tokens[:, -1].cuda(), tokens[:, -1].cuda()
    graph_state, eager_state = state.clone(), state.clone()
    with torch.no_grad():
        for _ in range(16):
            token, graph_state = decoder.step(token, graph_state)
            graph_state = graph_state.clone()  # the graph's buffers are rewritten by the next replay
            eager_logits, eager_state = gpu.step(eager_token, eager_state)
            eager_token = eager_logits.argmax(-1)
            assert torch.equal(token, eager_token)
    errors["decoder state vs eager, 16 steps"] = assert_rel_close(
        "decoder state vs eager", graph_state, eager_state, TOL["float32 step"] * 10
    )
    # the compiled level held: a step the compiler could not trace falls back (with a warning), exact but slower
    level = default_compile_level(gpu)
    assert decoder.compile == level, f"the decoder fell back from {level!r} to {decoder.compile!r}: {decoder.fallbacks}"
    params = {"arch": name, "config": config.name, "batch": 4, "T": 300, "compile": decoder.compile}
    write_json(out / f"generations_{name}.json", errors, params)


@pytest.mark.gpu
def test_the_sampler_kernel_draws_the_torch_samplers_tokens_on_cuda(out):
    """inference/sampling_kernel.py on the GPU against sampling.sample on the same device: 256 rows of a real
    vocabulary's size (50,277), peaked and flat, top_p 0.9 and 1, two temperatures; the tokens that differ (a sum
    rounded otherwise at the nucleus' edge, or a draw within an ulp) counted and written, at most one in a thousand.
    Writes results/gpu_checks/sampler_kernel.json."""
    import torch

    from rwkv_lab.inference.sampling import sample
    from rwkv_lab.inference.sampling_kernel import sample_kernel
    from rwkv_lab.results import write_json

    gen = torch.Generator().manual_seed(0)
    B, V = 256, 50277
    seeds = torch.randint(0, 2**62, (B,), generator=gen).cuda()
    counts = {}
    for kind, scale in (("peaked", 6.0), ("flat", 0.3)):
        logits = (scale * torch.randn(B, V, generator=gen)).cuda().half()
        for temperature in (0.8, 1.0):
            for top_p in (0.9, 1.0):
                steps = torch.full((B,), 3, dtype=torch.int64, device="cuda")
                got = sample_kernel(logits, temperature, top_p, seeds, steps)
                want = sample(logits, temperature, top_p, seeds, steps)
                counts[f"{kind}, T={temperature}, top_p={top_p}"] = int((got != want).sum())
    print(counts)
    write_json(out / "sampler_kernel.json", counts, {"B": B, "V": V})
    assert sum(counts.values()) <= len(counts) * B // 1000, counts
