"""duogpt inspect: what duogpt will do with a model, before any work (no weights are read)."""

from __future__ import annotations

import json

from duogpt.cli import options
from duogpt.files import write_text
from duogpt.inspection import inspect_model, render


def add(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="what duogpt will do with a model, before any work",
        description="Family, blocks, linears (fused ones with their parts), the four sparsifier inputs per block, "
        "BOS convention, dtype and the memory and disk estimate of a prune with the given settings; "
        "read from the config and tokenizer only.",
    )
    options.model(p)
    options.output_file(p, "--json", "also write the description as JSON")
    options.prune_settings(p)
    p.set_defaults(run=run)


def run(args) -> int:
    options.check_outputs(args.json)
    info = inspect_model(args.model, options.prune_config(args))
    print(render(info), end="")
    if args.json:
        write_text(args.json, json.dumps(info, indent=1))
    return 0
