"""Speed of the state-dynamics analysis: a 1k-token text on the default models, on this machine's CPU.

    python benchmarks/bench_dynamics.py [--tokens 1024] [--threads 2] [--rwkv7 default-rwkv7]

Times each step of notebook 05: on RWKV-4 (trajectory, features, correlations, implicit attention of every layer,
influence of one token) and on RWKV-7 (per-token decays, the matrix state's dynamics of every layer, implicit
attention of every layer, influence) and writes results/dynamics/speed_cpu.json.
"""

import argparse
import time

import torch

from rwkv_lab.analysis.dynamics import (
    attention_by_distance,
    half_lives,
    influence,
    matrix_state_dynamics,
    record_trajectory,
)
from rwkv_lab.analysis.text_features import channel_correlations, heldout_code, token_features
from rwkv_lab.loading.checkpoint import default_model, load_model
from rwkv_lab.loading.tokenizer import ByteTokenizer
from rwkv_lab.results import results_dir, write_json


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rwkv7", default="default-rwkv7", help="the RWKV-7 checkpoint (any load_model source)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = default_model()
    text = heldout_code(args.tokens)
    tokens = torch.tensor([b + 1 for b in text.encode()[: args.tokens]])
    times = {}
    start = time.perf_counter()
    t = time.perf_counter()
    traj = record_trajectory(model, tokens)
    times["trajectory_s"] = time.perf_counter() - t
    t = time.perf_counter()
    features = token_features(ByteTokenizer(), tokens)
    times["features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    channel_correlations(traj, features)
    times["correlations_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for layer in range(model.config.n_layer):
        attention_by_distance(model, tokens[:256], layer)
    times["implicit_attention_256_tokens_all_layers_s"] = time.perf_counter() - t
    t = time.perf_counter()
    influence(model, tokens, position=len(tokens) // 2, replacement=ord(" ") + 1)
    times["influence_s"] = time.perf_counter() - t
    model7 = load_model(args.rwkv7)
    t = time.perf_counter()
    half_lives(model7, tokens)
    times["rwkv7_decays_s"] = time.perf_counter() - t
    t = time.perf_counter()
    matrix_state_dynamics(model7, tokens)
    times["rwkv7_matrix_state_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for layer in range(model7.config.n_layer):
        attention_by_distance(model7, tokens[:256], layer, None)
    times["rwkv7_implicit_attention_256_tokens_all_layers_s"] = time.perf_counter() - t
    t = time.perf_counter()
    influence(model7, tokens, position=len(tokens) // 2, replacement=ord(" ") + 1)
    times["rwkv7_influence_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - start
    print(times)
    provenance = vars(args) | {"model": model.source, "rwkv7_model": model7.source}
    write_json(results_dir() / "dynamics" / "speed_cpu.json", times, provenance, "cpu")


if __name__ == "__main__":
    main()
