"""duogpt export: a pruned checkpoint in another layout (a plain transformers model, or the compact one)."""

from __future__ import annotations

from pathlib import Path

from duogpt import checkpoint
from duogpt.errors import UsageError
from duogpt.files import run_lock


def add(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a pruned checkpoint as a plain transformers model (or convert an older one to compact)",
        description="--dense OUT writes the masked dense weights as an ordinary transformers checkpoint (for "
        "tools that cannot read the packed form), with the thresholds in OUT/duogpt.json; --compact OUT "
        "rewrites a checkpoint of the older layout (masked dense plus packed copy) in the compact one.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="a directory written by duogpt prune")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--dense", metavar="OUT", help="write a plain transformers checkpoint here")
    target.add_argument("--compact", metavar="OUT", help="write the compact layout here")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=run)


def run(args) -> int:
    layout, out = ("dense", args.dense) if args.dense else ("compact", args.compact)
    if checkpoint.read_meta(args.checkpoint) is None:
        raise UsageError(f"{args.checkpoint} has no duogpt.json: export reads directories written by duogpt prune")
    if Path(out).resolve() == Path(args.checkpoint).resolve():
        raise UsageError("the output is the checkpoint itself: give another OUT directory")
    with run_lock(out, "export"):
        model, tokenizer, meta = checkpoint.load(args.checkpoint, runtime="dense" if layout == "dense" else "sparse")
        checkpoint.save(model, tokenizer, {**meta, "exported_from": str(args.checkpoint)}, out, args.force, layout)
    size = checkpoint.read_meta(out)["size"]
    print(f"wrote {out} ({layout}: {size['directory_bytes'] / 2**20:.1f} MB, {size['ratio']:.2f}x the dense weights)")
    return 0
