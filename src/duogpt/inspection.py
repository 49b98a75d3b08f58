"""What duogpt will do with a model, before any work: from its config and tokenizer, no weights read.

Family and layout, the blocks and their linears (fused ones with their parts), the four
sparsifier inputs per block, the BOS convention of the tokenizer, dtypes, and the memory and
disk estimate of a prune with given settings. Unsupported layouts are refused with the reason.
"""

from __future__ import annotations

from duogpt import corpus
from duogpt.config import PruneConfig
from duogpt.models import find_blocks, load_skeleton, source_dtype
from duogpt.pruning import preflight
from duogpt.pruning.pipeline import stream_names


def inspect_model(model: str | None, cfg: PruneConfig | None = None) -> dict:
    """A JSON-ready description of ``model`` and of a prune of it with ``cfg`` (default settings)."""
    cfg = cfg or PruneConfig()
    skeleton, tokenizer, path = load_skeleton(model, cfg.dtype)
    config = skeleton.config.get_text_config(decoder=True)
    _, blocks = find_blocks(skeleton)  # raises the refusal, with the reason, for other layouts
    first = blocks[0]
    linears = {}
    for name, linear in first.linears().items():
        parts = first.parts(name.split(".")[-1], linear)
        linears[name] = {
            "shape": [linear.out_features, linear.in_features],
            "parts": {p.name: p.stop - p.start for p in parts} if len(parts) > 1 else None,
        }
    inputs = {
        g: {"linears": list(lins), "width": next(iter(lins.values())).in_features} for g, lins in first.groups.items()
    }
    bos = corpus.bos_token(tokenizer, cfg.bos)
    streams = len(stream_names(cfg))
    held = cfg.chooses_alpha
    need = preflight.estimate(skeleton, cfg.nsamples, cfg.seqlen, streams, with_work_dir=True, held_out=held)
    out_of_core = preflight.estimate(
        skeleton, cfg.nsamples, cfg.seqlen, streams, True, offload=True, batch_size=cfg.batch_size, held_out=held
    )
    free = preflight.available_memory()
    plan = {
        "mode": preflight.mode(need, out_of_core),
        "out_of_core_memory_mb": out_of_core.memory / 2**20,
        "available_memory_mb": None if free is None else free / 2**20,
    }
    return {
        "model": model or "default",
        "path": path,
        "family": config.model_type,
        "class": type(skeleton).__name__,
        "source_dtype": str(source_dtype(config)).replace("torch.", ""),
        "prune_dtype": str(next(skeleton.parameters()).dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in skeleton.parameters()),
        "vocab_size": config.vocab_size,
        "blocks": len(blocks),
        "fused": sorted(first.fused),
        "linears_per_block": linears,
        "sparsifier_inputs_per_block": inputs,
        "bos_token_id": bos,
        "bos_rule": f"--bos {cfg.bos}: "
        + ("every sample and window starts with BOS" if bos is not None else "no BOS (text cut into windows)"),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "prune": {"method": cfg.method, "nsamples": cfg.nsamples, "seqlen": cfg.seqlen, **need.to_json(), **plan},
    }


def render(info: dict) -> str:
    """The description as aligned text for a terminal."""
    mb = info["prune"]
    rows = [
        ("model", f"{info['model']} ({info['path']})"),
        ("family", f"{info['family']} ({info['class']}), {info['blocks']} blocks"),
        ("parameters", f"{info['parameters'] / 1e6:.1f} M, vocabulary {info['vocab_size']}"),
        ("dtype", f"{info['source_dtype']} in the checkpoint, pruned in {info['prune_dtype']}"),
        ("fused linears", ", ".join(info["fused"]) or "none"),
    ]
    for name, lin in info["linears_per_block"].items():
        parts = f"  parts {lin['parts']}" if lin["parts"] else ""
        rows.append((f"  {name}", f"{lin['shape'][0]} x {lin['shape'][1]}{parts}"))
    for group, inp in info["sparsifier_inputs_per_block"].items():
        rows.append((f"  sparsifier {group}", f"input width {inp['width']}, feeds {', '.join(inp['linears'])}"))
    rows += [
        ("BOS", info["bos_rule"] + ("" if info["bos_token_id"] is None else f" (id {info['bos_token_id']})")),
        ("chat template", "yes (duogpt uses plain text)" if info["chat_template"] else "no"),
        (
            "prune estimate",
            f"{mb['method']}, {mb['nsamples']} x {mb['seqlen']} tokens: about "
            f"{mb['estimated_memory_mb'] / 1024:.1f} GB of memory, {mb['estimated_disk_mb'] / 1024:.1f} GB of disk",
        ),
        ("prune mode", _mode_line(mb)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n"


def _mode_line(mb: dict) -> str:
    free = "" if mb["available_memory_mb"] is None else f" ({mb['available_memory_mb'] / 1024:.1f} GB available)"
    ooc = f"out of core (--offload) needs about {mb['out_of_core_memory_mb'] / 1024:.1f} GB"
    if mb["mode"] == "in memory":
        return f"in memory on this machine{free}; {ooc}"
    if mb["mode"] == "out of core":
        return f"out of core, chosen automatically{free}: {ooc}"
    return f"does not fit on this machine{free}, even {ooc}: use a larger machine or fewer --nsamples"
