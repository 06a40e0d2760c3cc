"""Command line: `python -m rwkv_lab {convert,generate,info} ...` (also installed as `rwkv-lab`)."""

from __future__ import annotations

import argparse
import sys

from .inference.generation import stream
from .loading.checkpoint import FORMATS, SUPPORTED_DTYPES, convert, load_model
from .loading.tokenizer import tokenizer_for


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rwkv-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="rewrite a checkpoint in another format")
    p.add_argument("source", help="BlinkDL .pth, transformers folder, .safetensors, or hub id")
    p.add_argument("destination")
    p.add_argument("--to", choices=FORMATS, default="safetensors", help="output format (default: safetensors)")
    p.add_argument("--dtype", choices=sorted(SUPPORTED_DTYPES), help="convert the weights (default: keep)")

    p = sub.add_parser("generate", help="continue a prompt with the recurrent form")
    p.add_argument("prompt")
    p.add_argument("--model", default="default", help="'default', a checkpoint path or a hub id")
    p.add_argument("--tokenizer", help="tokenizer.json, hub id or 'bytes' (default: the model's own)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(SUPPORTED_DTYPES))
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")

    p = sub.add_parser("info", help="print a checkpoint's configuration")
    p.add_argument("model")

    args = parser.parse_args(argv)
    if args.command == "convert":
        print(convert(args.source, args.destination, format=args.to, dtype=args.dtype))
    elif args.command == "generate":
        model = load_model(args.model, dtype=args.dtype, device=args.device)
        tokenizer = tokenizer_for(model, args.tokenizer)
        for piece in stream(
            model,
            tokenizer,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            stop=args.stop,
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        model = load_model(args.model)
        print(f"{model.source}\n{model.config}\nparameters: {model.num_params():,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
