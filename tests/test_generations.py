"""Every public entry takes either generation: the same calls on a tiny RWKV-4 and a tiny RWKV-7 (byte-level,
random weights whose outputs depend on the context), each checked against the model's own eager step."""

import dataclasses
import json

import pytest
import torch
from helpers import TOL, assert_compiled_step_traces_once, assert_rel_close

import rwkv_lab
from rwkv_lab.analysis.equivalence import compare_formulations, step_all
from rwkv_lab.evaluation.backend import RWKVLM
from rwkv_lab.loading.checkpoint import FORMATS, load_model, save_model
from rwkv_lab.loading.tokenizer import ByteTokenizer, tokenizer_for
from rwkv_lab.models import architecture, architecture_of
from rwkv_lab.training.trainer import TrainConfig, Trainer
from rwkv_lab.training.trainer import main as train_main

GENERATIONS = ["rwkv4", "rwkv7"]


def tiny_model(name: str, dtype=torch.float32):
    arch = architecture(name)
    return arch.build(arch.get_config("tiny"), seed=1, zero_projections=False).to(dtype).eval()


@pytest.fixture(params=GENERATIONS)
def model(request):
    return tiny_model(request.param)


def test_the_registry_knows_each_model_config_and_state(model):
    arch = architecture_of(model)
    assert architecture_of(model.config) is arch and model.config.arch == arch.name
    state = model.init_state(3)
    assert architecture_of(model).recurrent and state.batch_size == 3
    picked = type(state).cat([state[2], state[0:1]])
    assert picked.batch_size == 2 and picked.allclose(state[[2, 0]])
    total = sum(t.numel() for t in state[0].tensors())
    assert total == model.config.state_numbers, (total, model.config.state_numbers)


def test_generate_is_greedy_stepping_through_the_decoder(model):
    tokenizer = tokenizer_for(model)
    assert isinstance(tokenizer, ByteTokenizer)
    text = rwkv_lab.generate(model, tokenizer, "def f(x):", max_new_tokens=12, temperature=0)
    ids = [tokenizer.eot_id] if not tokenizer.encode("def f(x):") else tokenizer.encode("def f(x):")
    logits, state = model.prefill(torch.tensor([ids]))
    expected = []
    for _ in range(12):
        token = int(logits.argmax(-1))
        if token == tokenizer.eot_id:
            break
        expected.append(token)
        logits, state = model.step(torch.tensor([token]), state)
    assert text == tokenizer.decode(expected)
    batch = rwkv_lab.generate(model, tokenizer, ["def f(x):", "import os"], max_new_tokens=12, temperature=0)
    assert batch[0] == text, "a prompt decoded in a batch gives what it gives alone"


def test_the_decoders_compiled_step_traces_whole(model):
    """What the decoder compiles on CUDA, the step with the sampler as one graph (fullgraph), traces for either
    generation, with the batch symbolic, and gives the eager step's tokens, logits and state: RWKV-7's CPU step is a
    TorchScript call, which the compiler cannot trace, so under compilation it runs the same blocks as Python.
    Traced with dynamo's eager backend here (tracing is what fails; tests/test_gpu.py runs the whole decoder with
    inductor on a GPU), once for batches 2, 4 and 8: a new bucket costs no compilation."""
    states = {}
    for batch in (2, 4, 8):  # the buckets past 1: one compilation serves them all
        prompt = torch.randint(1, 200, (batch, 9), generator=torch.Generator().manual_seed(batch))
        states[batch] = model.prefill(prompt)[1]
    assert_compiled_step_traces_once(model, states, "compiled step vs eager")


def test_the_compiled_step_builds_one_layer_of_each_kind(model):
    """Under torch.compile each block of the step is a compile region (torch.compiler.nested_compile_region): at 5
    layers the traced step calls one layer subgraph for every layer after the first, which differs (RWKV-4's ln0,
    RWKV-7's v_first) and which the compiler may inline, as torch 2.13 does a region called once. So compilation
    costs two layers, not L (the first call of the decoder on CUDA)."""
    from rwkv_lab.inference.decoder import _model_step

    arch = architecture_of(model)
    deep = arch.build(dataclasses.replace(model.config, n_layer=5), seed=1, zero_projections=False).eval()
    graphs = []

    def capture(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    tokens, state = torch.tensor([3]), deep.init_state(1)
    with torch.no_grad():
        ref_logits, ref_state = _model_step(deep, tokens, state)
        logits, new_state = torch.compile(_model_step, fullgraph=True, backend=capture)(deep, tokens, state)
    (graph,) = graphs
    calls = [n for n in graph.graph.nodes if n.target is torch.ops.higher_order.invoke_subgraph]
    layers = {n.args[0].target for n in calls}
    print(f"{len(calls)} layer calls, {len(layers)} layer subgraphs: {sorted(layers)}")
    assert len(calls) >= 4 and len(layers) <= 2
    assert_rel_close("step with compile regions vs eager, logits", logits, ref_logits, TOL["float32 step"])
    assert_rel_close("step with compile regions vs eager, state", new_state, ref_state, TOL["float32 step"])


def test_the_formulations_agree(model):
    tokens = torch.randint(0, model.config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    report = compare_formulations(model, tokens, prefill=20)
    print({k: v for k, v in report.items() if k.startswith("rel_err")})
    for key in ("rel_err_logits_parallel", "rel_err_logits_prefill", "rel_err_state_parallel"):
        assert report[key] <= TOL["float32"], key


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_and_names_its_generation(model, fmt, tmp_path):
    path = tmp_path / {"safetensors": "m.safetensors", "pth": "m.pth", "transformers": "hf"}[fmt]
    save_model(model, path, format=fmt)
    loaded = load_model(path)
    assert architecture_of(loaded) is architecture_of(model) and loaded.config.n_layer == model.config.n_layer
    tokens = torch.tensor([[1, 5, 200, 7, 9]])
    assert_rel_close(f"{fmt} logits", loaded(tokens)[0], model(tokens)[0], TOL["float32 step"])


def test_the_command_line_converts_and_describes_either(model, tmp_path, capsys):
    from rwkv_lab.__main__ import main as cli

    save_model(model, tmp_path / "m.pth", format="pth")
    assert cli(["convert", str(tmp_path / "m.pth"), str(tmp_path / "hf"), "--to", "transformers"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    print(config.get("model_type"))
    assert architecture_of(load_model(tmp_path / "hf")) is architecture_of(model)
    capsys.readouterr()
    # in this process, as convert above: a fresh `python -m rwkv_lab` would spend ~3 s importing (the README's
    # rwkv-lab commands run as processes in tests/test_readme.py)
    assert cli(["info", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert f"{model.config.n_layer}" in out and type(model.config).__name__ in out


def test_the_lm_eval_backend_scores_like_one_forward_pass(model):
    lm = RWKVLM(model=model, tokenizer="bytes", batch_size=2)
    requests = [(("", ""), [5, 6, 7], [20, 21]), (("", ""), [5, 6, 7], [30]), (("", ""), [8], [9, 10, 11])]
    got = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    for (_, ctx, cont), (ll, _) in zip(requests, got):
        logits, _ = model(torch.tensor([ctx + cont])[:, :-1])
        lp = torch.log_softmax(logits[0].double(), -1)[len(ctx) - 1 :]
        expected = float(lp.gather(-1, torch.tensor(cont)[:, None]).sum())
        assert abs(ll - expected) <= 1e-4 * max(1.0, abs(expected)), (ll, expected)


@pytest.mark.parametrize("arch", GENERATIONS + ["transformer"])
def test_the_trainer_trains_each_generation(arch, tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(10):
        (root / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j} + {i}\n\n" for j in range(20)))
    from rwkv_lab.training.corpus import build_corpus

    cfg = TrainConfig(
        arch=arch, model="byte-2x32", context=32, batch_size=4, tokens=4 * 32 * 8, eval_every=4, log_every=4,
        eval_tokens=256, device="cpu", lr=3e-3,
    )  # fmt: skip
    trainer = Trainer(cfg, build_corpus(root, val_fraction=0.2), progress=False)
    assert architecture_of(trainer.model).name == cfg.arch
    first = trainer.train_step()
    for _ in range(7):
        last = trainer.train_step()
    print(f"{arch}: loss {first:.3f} -> {last:.3f}")
    assert last < first


def test_the_training_command_line_takes_rwkv7(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(10):
        (root / f"m{i}.py").write_text("".join(f"def g{j}(y):\n    return y + {j * i}\n\n" for j in range(20)))
    out = tmp_path / "run"
    args = ["--arch", "rwkv7", "--model", "byte-2x32", "--context", "32", "--batch-size", "4", "--tokens", "512"]
    args += ["--eval-every", "2", "--eval-tokens", "256", "--device", "cpu", "--data", str(root), "--out", str(out)]
    # the command line's main in this process (a fresh one would spend ~3 s importing); the README's --arch rwkv7
    # line runs as a process in tests/test_readme.py
    assert train_main(args) == 0
    trained = load_model(out / "model.safetensors")
    assert architecture_of(trained).name == "rwkv7"


def test_a_state_from_one_generation_is_refused_by_the_other():
    four, seven = tiny_model("rwkv4"), tiny_model("rwkv7")
    tokens = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match="state must be"):
        four(tokens, seven.init_state(1))
    with pytest.raises(TypeError, match="state must be"):
        seven(tokens, four.init_state(1))


def test_prefill_then_steps_equals_stepping_every_token(model):
    tokens = torch.randint(0, model.config.vocab_size, (3, 19), generator=torch.Generator().manual_seed(2))
    stepped, s_step = step_all(model, tokens)
    _, s_pre = model.prefill(tokens[:, :11])
    rest, s_pre = step_all(model, tokens[:, 11:], s_pre)
    assert_rel_close("prefill + steps logits", rest, stepped[:, 11:], TOL["float32"])
    assert_rel_close("prefill + steps state", s_pre, s_step, TOL["float32"])
