"""lm-eval backend for RWKV-4: `--model rwkv_lab`, scoring each context once and every continuation from its state.

    from rwkv_lab.evaluation.tasks import run_lm_eval
    results = run_lm_eval("default", ["piqa", "lambada_openai"], limit=100, data_dir="../shared/data/lm_eval")

    # the lm_eval command line: importing rwkv_lab.evaluation registers the model, so run lm-eval through us
    python -m rwkv_lab.evaluation --model rwkv_lab --model_args pretrained=RWKV/rwkv-4-169m-pile,device=cuda \\
        --tasks piqa --batch_size 32          # every lm_eval CLI option passes through

How the three request types run on an RNN:
- loglikelihood: requests are grouped by context; contexts of equal token length run as one batch in the
  parallel form (prefill), giving each its state and its last logits (which score the first continuation token).
  The continuations of that batch of contexts then run batched, each from a copy of its context's state.
  Multiple-choice tasks (one context, several continuations) run each context once; Winogrande-style tasks
  (several contexts, one continuation) batch by context as well. An empty context is token 0, end-of-text, as
  lm-eval does for models without BOS.
- loglikelihood_rolling: the document in windows of `chunk` tokens with the state carried across them: RWKV
  needs no overlapping windows, so this equals one forward pass over the whole document.
- generate_until: greedy decoding through the library's `generate` (the fast decoder) until a stop string or
  the token limit.

lm-eval's own request cache keys on the request alone; `cache_dir` keeps ours per model identity (SHA-256 of the
checkpoint's bytes, the dtype and the tokenizer), appended request by request, so an interrupted run resumes and
two models never share results.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import defaultdict
from pathlib import Path

import lm_eval.models  # noqa: F401 - lm-eval registers its own backends only into an empty registry: load them first
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from ..inference.generation import generate
from ..loading.checkpoint import load_model, resolve_source
from ..loading.default import default_named
from ..loading.tokenizer import check_tokenizer, tokenizer_for
from .cache import ResultCache, file_digest


@register_model("rwkv_lab")
class RWKVLM(TemplateLM):
    def __init__(
        self,
        pretrained: str = "default",
        tokenizer: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int | str = 16,
        chunk: int = 4096,
        cache_dir: str | None = None,
        max_gen_toks: int = 256,
        state_block: int = 1024,
        model=None,
        **unused,
    ):
        super().__init__()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line passes device='cuda' by default; its hf backend falls back the same way
            warnings.warn(f"device {device!r} requested but CUDA is not available: evaluating on the CPU", stacklevel=2)
            device = "cpu"
        self._init_distributed()
        if self._world_size > 1 and str(device).startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', self._rank))}"
            torch.cuda.set_device(device)
        self._device = torch.device(device)
        if model is None:
            model = load_model(pretrained, dtype=dtype, device=self._device)
        self.model = model.eval()
        if tokenizer is None and Path(str(pretrained), "tokenizer.json").is_file():
            tokenizer = str(Path(str(pretrained), "tokenizer.json"))  # a transformers folder's own tokenizer
        self.tokenizer = tokenizer_for(self.model, tokenizer)
        check_tokenizer(self.tokenizer, self.model)
        self.batch_size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        # contexts whose states are held at once while their continuations run (memory: state_block * 5 L C floats)
        self.chunk, self.max_gen_toks, self.state_block = int(chunk), int(max_gen_toks), int(state_block)
        self.cache = None
        if cache_dir is not None:
            identity = self.identity(pretrained)
            name = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
            self.cache = ResultCache(Path(cache_dir) / f"{name}.jsonl", identity)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm-eval's constructor from `--model_args`: what those name (device=cuda, batch_size=...) wins over the
        command line's own --device / --batch_size, instead of being passed twice."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval import utils

        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    # ---- data parallel: one process per device (accelerate launch / torchrun); lm-eval shards the documents ----

    def _init_distributed(self) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()

    def all_gather(self, tensor):
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst=0):
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def identity(self, pretrained: str) -> dict:
        """What makes two runs' results comparable: the weights' bytes, the compute dtype and the tokenizer."""
        default = default_named(pretrained)
        weights = file_digest(default.weights if default else resolve_source(str(pretrained)))
        return {"weights_sha256": weights, "dtype": str(self.model.dtype), "tokenizer": self.tokenizer.name}

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def device(self):
        return self._device

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    # ---- loglikelihood -------------------------------------------------------------------------------------

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        results: list = [None] * len(requests)
        todo = []
        for i, (args, ctx, cont) in enumerate(requests):
            if not cont:
                raise ValueError(f"request {i} has an empty continuation (context {args[0]!r}); nothing to score")
            cached = self.cache.get("loglikelihood", [ctx, cont]) if self.cache else None
            if cached is not None:
                results[i] = tuple(cached)
            else:
                todo.append(i)
        by_context = defaultdict(list)  # context tokens -> request indices
        for i in todo:
            by_context[tuple(requests[i][1])].append(i)
        contexts = sorted(by_context, key=len)
        bar = tqdm(total=len(todo), desc="loglikelihood (rwkv_lab)", disable=disable_tqdm)
        for block in range(0, len(contexts), self.state_block):
            done = self._score_block(contexts[block : block + self.state_block], by_context, requests)
            for i, value in done.items():
                results[i] = value
                if self.cache:
                    self.cache.put("loglikelihood", [requests[i][1], requests[i][2]], list(value))
            bar.update(len(done))
        bar.close()
        for i, value in enumerate(results):
            self.cache_hook.add_partial("loglikelihood", requests[i][0], value)
        return results

    def _score_block(self, contexts, by_context, requests) -> dict:
        """Prefill a block of contexts (sorted by length; equal lengths batched), keeping each one's state and
        scoring every continuation's first token from its last logits; then run all the block's continuations,
        longest first, in batches from copies of their contexts' states (right-padded: padding never reaches a
        real position, and sorting keeps it short)."""
        states, first, jobs = [], {}, []
        runs = []  # runs of equal length, at most batch_size long
        for ctx in contexts:
            if runs and len(runs[-1][0]) == len(ctx) and len(runs[-1]) < self.batch_size:
                runs[-1].append(ctx)
            else:
                runs.append([ctx])
        offset = 0
        for group in runs:
            last, st = self.model.prefill(torch.tensor(group, device=self.device), chunk=self.chunk)
            logp = F.log_softmax(last.float(), dim=-1)  # (G, V)
            best = logp.argmax(-1).tolist()
            for g, ctx in enumerate(group):
                row = offset + g
                for i in by_context[ctx]:
                    c0 = requests[i][2][0]
                    first[i] = (float(logp[g, c0]), best[g] == c0)
                    jobs.append((row, i, requests[i][2]))
            states.append(st)
            offset += len(group)
        state = type(states[0]).cat(states)  # the contexts of the block, in order
        jobs.sort(key=lambda j: -len(j[2]))
        out = {}
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            logp = [first[i][0] for _, i, _ in batch]
            greedy = [first[i][1] for _, i, _ in batch]
            longest = max(len(c) for _, _, c in batch)
            if longest > 1:
                inputs = torch.tensor([c[:-1] + [0] * (longest - len(c)) for _, _, c in batch], device=self.device)
                targets = torch.tensor([c[1:] + [0] * (longest - len(c)) for _, _, c in batch], device=self.device)
                rows = torch.tensor([r for r, _, _ in batch], device=self.device)
                real = torch.tensor(
                    [[t < len(c) - 1 for t in range(longest - 1)] for _, _, c in batch], device=self.device
                )  # (b, longest - 1)
                hidden, _ = self.model.hidden(inputs, state[rows], check=False)  # (b, T, C)
                # the head only at real positions: it dominates the cost at 50k tokens
                logits = self.model.head(hidden[real]).float()  # (n_real, V)
                target = targets[real]
                picked = (logits.gather(-1, target[:, None])[:, 0] - torch.logsumexp(logits, -1)).tolist()
                hits = (logits.argmax(-1) == target).tolist()
                at = 0
                for j, (_, _, c) in enumerate(batch):
                    n = len(c) - 1
                    logp[j] += sum(picked[at : at + n])
                    greedy[j] = greedy[j] and all(hits[at : at + n])
                    at += n
            for (_, i, _), lp_j, g_j in zip(batch, logp, greedy):
                out[i] = (lp_j, g_j)
        return out

    # ---- rolling loglikelihood -----------------------------------------------------------------------------

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for req in tqdm(requests, desc="loglikelihood_rolling (rwkv_lab)", disable=disable_tqdm):
            (text,) = req.args
            cached = self.cache.get("rolling", text) if self.cache else None
            if cached is None:
                cached = self.rolling_logprob(self.tok_encode(text))
                if self.cache:
                    self.cache.put("rolling", text, cached)
            results.append(cached)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), cached)
        return results

    @torch.no_grad()
    def rolling_logprob(self, tokens: list[int]) -> float:
        """Sum of log p(token | everything before it), from end-of-text, in windows with the state carried."""
        if not tokens:
            return 0.0
        ids = torch.tensor([[self.eot_token_id] + tokens], device=self.device)
        state, total = None, 0.0
        for start in range(0, len(tokens), self.chunk):
            x = ids[:, start : start + self.chunk]
            y = ids[:, start + 1 : start + 1 + self.chunk]
            logits, state = self.model(x[:, : y.shape[1]], state, check=False)
            total += float(F.log_softmax(logits.float(), -1).gather(-1, y[..., None]).sum())
        return total

    # ---- generation ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        for req in tqdm(requests, desc="generate_until (rwkv_lab)", disable=disable_tqdm):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            key = [context, until, max_tokens]
            cached = self.cache.get("generate_until", key) if self.cache else None
            if cached is None:
                cached = self.greedy(context, until, max_tokens)
                if self.cache:
                    self.cache.put("generate_until", key, cached)
            results.append(cached)
            self.cache_hook.add_partial("generate_until", (context, {"until": until}), cached)
        return results

    def greedy(self, context: str, until: list[str], max_tokens: int) -> str:
        """Greedy continuation through the library's generation path (lm-eval's hf backend: no prefix unless the
        context is empty, which `generate` starts with end-of-text as well)."""
        return generate(self.model, self.tokenizer, context, max_new_tokens=max_tokens, temperature=0.0, stop=until)
