"""duogpt generate: greedy generation with decode tokens/s."""

from __future__ import annotations

import sys

from duogpt.checkpoint import load_any
from duogpt.cli import options
from duogpt.runtime.generate import generate


def add(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="greedy generation with decode tokens/s",
        description="Greedy generation; prints the text and decode tokens/s.",
    )
    options.model(p, "model or duogpt directory", metavar="MODEL_OR_DIR")
    p.add_argument("--prompt", required=True, help="prompt text")
    options.positive(p, "--max-new-tokens", "tokens to generate", default=32)
    p.add_argument(
        "--runtime",
        choices=("dense", "sparse"),
        default="sparse",
        help="dense: masked dense matmuls; sparse: the spMspV kernel at decode (default: %(default)s)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    model, tokenizer, _ = load_any(args.model, runtime=args.runtime)
    result = generate(model, tokenizer, args.prompt, args.max_new_tokens)
    print(result.text)
    print(
        f"decode: {result.decode_tokens_per_second:.2f} tokens/s ({args.runtime} runtime, "
        f"{len(result.tokens)} new tokens, prefill {result.prefill_seconds:.2f} s)",
        file=sys.stderr,
    )
    return 0
