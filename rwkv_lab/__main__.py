"""Command line: `python -m rwkv_lab {convert,generate,info} ...` (also installed as `rwkv-lab`).

Bad usage prints one line and exits 2; a failed operation prints one line and exits 1; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from .inference.generation import stream
from .inference.sampling import check_sampling
from .loading.checkpoint import FORMATS, SUPPORTED_DTYPES, convert, load_model
from .loading.tokenizer import tokenizer_for


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwkv-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    # --debug after the subcommand too; SUPPRESS: a subcommand without it keeps what was given before it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as before the subcommand")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", parents=[debug], help="rewrite a checkpoint in another format")
    p.add_argument("source", help="BlinkDL .pth, transformers folder, .safetensors, or hub id")
    p.add_argument("destination", help="a .safetensors or .pth file, or a folder for --to transformers")
    p.add_argument("--to", choices=FORMATS, default="safetensors", help="output format (default: safetensors)")
    p.add_argument("--dtype", choices=sorted(SUPPORTED_DTYPES), help="convert the weights (default: keep)")
    p.add_argument("--force", action="store_true", help="replace an existing destination (a folder whole)")

    p = sub.add_parser("generate", parents=[debug], help="continue a prompt with the recurrent form")
    p.add_argument("prompt")
    p.add_argument("--model", default="default", help="'default', a checkpoint path or a hub id")
    p.add_argument("--tokenizer", help="tokenizer.json, hub id or 'bytes' (default: the model's own)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(SUPPORTED_DTYPES))
    p.add_argument("--max-new-tokens", type=non_negative_int, default=100)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=non_negative_int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable, not empty)")
    p.add_argument("--new-document", action="store_true", help="read the prompt as a document's start")

    p = sub.add_parser("info", parents=[debug], help="print a checkpoint's configuration")
    p.add_argument("model")
    return parser


def run(args) -> int:
    if args.command == "convert":
        print(convert(args.source, args.destination, format=args.to, dtype=args.dtype, force=args.force))
    elif args.command == "generate":
        # strict: weights holding NaN give no text worth printing, so the command fails (after naming them)
        model = load_model(args.model, dtype=args.dtype, device=args.device, strict=True)
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
            new_document=args.new_document,
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        model = load_model(args.model)
        print(f"{model.source}\n{model.config}\nparameters: {model.num_params():,}")
    return 0


def main(argv=None) -> int:
    cli = parser()
    args = cli.parse_args(argv)  # bad usage: argparse prints one line and exits 2
    if args.command == "generate":  # checked before the model loads, which can take minutes
        try:
            check_sampling(args.temperature, args.top_p)
        except (TypeError, ValueError) as err:
            cli.error(str(err))
        if "" in args.stop:
            cli.error("--stop '' would end generation before its first token; give a non-empty string")
    try:
        return run(args)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"rwkv-lab {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
