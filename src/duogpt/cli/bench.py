"""duogpt bench: dense vs dual-sparse benchmarks, side by side in one run."""

from __future__ import annotations

import json

from duogpt.cli import options
from duogpt.errors import UsageError
from duogpt.files import write_text
from duogpt.runtime import bench, bench_deploy, bench_gemv, bench_gpu


def add(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="kernel, decode and deployed-model benchmarks against dense",
        description="Dense vs dual-sparse benchmarks, side by side in one run.",
    )
    p.add_argument(
        "kind",
        choices=("gemv", "decode", "deploy", "gpu"),
        help="gemv: one linear at 7B and default-model shapes; decode: tokens/s; deploy: a pruned checkpoint's "
        "size, memory, prefill and decode against its source model; gpu: the Triton kernel against cuBLAS "
        "(launch-shape sweep, GEMV, a 7B-shaped stack; needs CUDA)",
    )
    p.add_argument("--checkpoint", metavar="DIR", help="decode: also time this pruned checkpoint; deploy: required")
    options.positive(p, "--prompt-tokens", "deploy: prefill prompt length", default=512)
    options.positive(p, "--rounds", "decode, deploy: rounds taken in turn (medians)", default=3)
    options.positive(p, "--layers", "decode, gpu: blocks of the random 7B-shaped stack", default=4)
    options.positive(p, "--repeats", "gemv: timed calls per side", default=50)
    p.add_argument("--quick", action="store_true", help="gemv: default-model shapes only, fewer repeats")
    options.output_file(p, "--json", "write the records as JSON")
    options.output_file(p, "--markdown", "write a Markdown summary")
    p.set_defaults(run=run)


def run(args) -> int:
    options.check_outputs(args.json, args.markdown)
    if args.kind == "gemv":
        shapes = bench.DEFAULT_MODEL_SHAPES if args.quick else None
        result = bench_gemv.gemv(shapes=shapes, repeats=10 if args.quick else args.repeats)
        text = bench_gemv.gemv_markdown(result)
    elif args.kind == "decode":
        result = bench.decode(args.checkpoint, layers=args.layers, rounds=args.rounds)
        text = bench.decode_markdown(result)
    elif args.kind == "gpu":
        saved = (lambda r: write_text(args.json, json.dumps(r, indent=1))) if args.json else None
        result = bench_gpu.gpu(layers=args.layers, saved=saved)
        text = bench_gpu.gpu_markdown(result)
    else:
        if not args.checkpoint:
            raise UsageError("bench deploy needs --checkpoint DIR (a directory written by duogpt prune)")
        result = bench_deploy.deploy(args.checkpoint, prompt_tokens=args.prompt_tokens, rounds=args.rounds)
        text = bench_deploy.deploy_markdown(result)
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
    if args.markdown:
        write_text(args.markdown, text)
    print(text)
    return 0
