"""duogpt generate: text from a (pruned) model through transformers' generate(), with decode tokens/s."""

from __future__ import annotations

import sys

from duogpt import checks
from duogpt.checkpoint import load_any
from duogpt.cli import options
from duogpt.runtime.generate import generate


def add(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text and report decode tokens/s",
        description="Generates with the model's generate() (greedy unless --do-sample), with the KV cache; "
        "prints the text, and the prefill time and decode tokens/s on stderr.",
    )
    options.model(p, "model or duogpt directory", metavar="MODEL_OR_DIR")
    p.add_argument("--prompt", required=True, help="prompt text")
    options.positive(p, "--max-new-tokens", "tokens to generate", default=32)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument(
        "--temperature",
        type=checks.parse(checks.positive),
        default=1.0,
        help="sampling temperature (default: %(default)s)",
    )
    p.add_argument(
        "--top-p",
        type=checks.parse(checks.probability_mass),
        default=1.0,
        help="nucleus sampling mass (default: %(default)s)",
    )
    p.add_argument("--seed", type=checks.parse(checks.integer), default=None, help="seed for sampling")
    p.add_argument(
        "--runtime",
        choices=("dense", "sparse"),
        default=None,
        help="sparse: pruned linears packed, decode through the dual-sparse kernels; dense: masked dense "
        "weights (default: sparse for a duogpt checkpoint, dense for a plain model)",
    )
    options.device(p)
    p.set_defaults(run=run)


def run(args) -> int:
    model, tokenizer, meta = load_any(args.model, device=args.device, runtime=args.runtime)
    result = generate(
        model, tokenizer, args.prompt, args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.seed
    )
    print(result.text)
    runtime = args.runtime or ("sparse" if meta is not None else "dense")
    print(
        f"decode: {result.decode_tokens_per_second:.2f} tokens/s ({runtime} runtime, "
        f"{len(result.tokens)} new tokens, prefill {result.prefill_seconds:.2f} s)",
        file=sys.stderr,
    )
    return 0
