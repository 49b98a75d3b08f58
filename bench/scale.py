"""Scale benchmark: a random Llama-7B-shaped bfloat16 model pruned out of core, timed per block.

    python bench/scale.py --blocks 32 --work runs/scale --json docs/scale.json --markdown docs/scale.md
    python bench/scale.py --blocks 2 --compare-blocks 0 --work runs/try   # a quick look

Writes the model shard by shard (never whole in memory), prunes it with DuoGPT, and a model of
only its first ``--compare-blocks`` blocks (the same tensors) with DuoGPT and SparseGPT for the
time ratio (each prune in its own process, ``--offload``, so its peak RSS is its own), and
reports per block the seconds spent in forward passes, statistics, solves and I/O, the peak
RSS, and the bytes of the input, the resumable state and the output. A linear cost model fitted
to the measured phases (forward ~ tokens x block parameters, statistics ~ tokens x sum of k^2,
solves ~ sum of k^3 + n k^2, I/O ~ bytes) extrapolates to more tokens, all 32 blocks and a
70B shape. The prunes resume: run the same command again after an interruption.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig

from duogpt.files import write_text
from duogpt.models import default_model_dir
from duogpt.report import markdown

SHAPES = {  # hidden, FFN, heads, KV heads, blocks
    "7B": (4096, 11008, 32, 32, 32),
    "70B": (8192, 28672, 64, 8, 80),
}
PRUNE = """
import json, sys
import duogpt
duogpt.prune(sys.argv[1], method=sys.argv[3], nsamples=int(sys.argv[4]), seqlen=int(sys.argv[5]), out=sys.argv[2],
             offload=True, dtype="bfloat16", progress=False)
print(json.dumps(json.load(open(sys.argv[2] + "/duogpt.json"))))
"""


def block_tensors(hidden: int, ffn: int, heads: int, kv: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    head_dim = hidden // heads
    shapes = {
        "self_attn.q_proj.weight": (hidden, hidden),
        "self_attn.k_proj.weight": (kv * head_dim, hidden),
        "self_attn.v_proj.weight": (kv * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, hidden),
        "mlp.gate_proj.weight": (ffn, hidden),
        "mlp.up_proj.weight": (ffn, hidden),
        "mlp.down_proj.weight": (hidden, ffn),
    }
    out = {name: (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16) for name, shape in shapes.items()}
    out["input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    out["post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return out


def make_model(path: Path, blocks: int, shape: str = "7B") -> int:
    """A random Llama of ``shape`` with ``blocks`` blocks, one shard per block; returns its bytes."""
    hidden, ffn, heads, kv, _ = SHAPES[shape]
    if (path / "model.safetensors.index.json").is_file():
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())  # offline; 49152 tokens
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        num_hidden_layers=blocks,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i in range(blocks):
        tensors = {f"model.layers.{i}.{k}": v for k, v in block_tensors(hidden, ffn, heads, kv, gen).items()}
        save_file(tensors, str(path / f"model-{i + 1:05d}.safetensors"), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, f"model-{i + 1:05d}.safetensors"))
        total += sum(t.numel() * 2 for t in tensors.values())
    rest = {
        "model.embed_tokens.weight": (torch.randn(len(tokenizer), hidden, generator=gen) * 0.02).to(torch.bfloat16),
        "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
        "lm_head.weight": (torch.randn(len(tokenizer), hidden, generator=gen) * 0.02).to(torch.bfloat16),
    }
    save_file(rest, str(path / "model-rest.safetensors"), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(rest, "model-rest.safetensors"))
    total += sum(t.numel() * 2 for t in rest.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return total


def prune(src: Path, out: Path, method: str, nsamples: int, seqlen: int) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", PRUNE, str(src), str(out), method, str(nsamples), str(seqlen)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"{method} prune failed: {run.stderr.strip().splitlines()[-1:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def work_per_block(hidden: int, ffn: int, heads: int, kv: int, tokens: int) -> dict[str, float]:
    """The quantities each phase of one block scales with."""
    kv_rows = kv * hidden // heads
    linears = [
        (hidden, hidden),
        (kv_rows, hidden),
        (kv_rows, hidden),
        (hidden, hidden),
        (ffn, hidden),
        (ffn, hidden),
        (hidden, ffn),
    ]
    params = sum(n * k for n, k in linears)
    widths = [hidden, hidden, hidden, ffn]  # the four group inputs
    return {
        "forward": tokens * params,
        "statistics": tokens * sum(k * k for k in widths),
        "solve": sum(k**3 / 3 + n * k * k for n, k in linears),
        "io": params * 2,
    }


def fit_and_extrapolate(blocks: list[dict], tokens: int, targets: dict[str, tuple]) -> dict:
    """Seconds per unit of work for each phase (median block), then the time of other runs."""
    hidden, ffn, heads, kv, _ = SHAPES["7B"]
    here = work_per_block(hidden, ffn, heads, kv, tokens)
    phases = ("forward", "statistics", "solve", "io")
    median = {p: sorted(b.get(p, 0.0) for b in blocks)[len(blocks) // 2] for p in phases}
    rate = {p: median[p] / here[p] for p in phases}
    out = {}
    for name, (shape, n_tokens) in targets.items():
        hidden, ffn, heads, kv, n_blocks = SHAPES[shape]
        work = work_per_block(hidden, ffn, heads, kv, n_tokens)
        per_block = {p: rate[p] * work[p] for p in phases}
        out[name] = {"per_block": per_block, "hours": sum(per_block.values()) * n_blocks / 3600}
    return {"median_block": median, "extrapolated": out}


def block_total(b: dict) -> float:
    """A block's wall time (states saved by older versions lack the total of the block saved last: its phases)."""
    return b.get("total", sum(b.get(p, 0.0) for p in ("forward", "statistics", "solve", "io")))


def report_markdown(result: dict) -> str:
    rows = []
    for method, run in result["runs"].items():
        for b in run["block_seconds"]:
            rows.append(
                [
                    method,
                    str(b["block"]),
                    *(f"{b.get(p, 0.0):.1f}" for p in ("forward", "statistics", "solve", "io")),
                    f"{block_total(b):.1f}",
                ]
            )
    res = {m: r["resources"] for m, r in result["runs"].items()}
    lines = [
        f"Random Llama-7B-shaped model (hidden 4096, FFN 11008, 32 heads), {result['blocks']} block(s), bfloat16, "
        f"{result['input_gb']:.2f} GB of shards; {result['nsamples']} x {result['seqlen']} calibration tokens; "
        f"`--offload`, each method in its own process. Machine: {result['machine']}.",
        "",
        markdown(["method", "block", "forward s", "statistics s", "solve s", "I/O s", "total s"], rows),
        markdown(
            ["method", "peak RSS", "estimate", "largest resumable state", "output", "output / same weights dense"],
            [
                [
                    m,
                    f"{r['peak_rss_mb']:.0f} MB",
                    f"{r['estimated_memory_mb']:.0f} MB",
                    f"{r.get('work_state_mb', 0):.0f} MB",
                    f"{result['runs'][m]['checkpoint_mb']:.0f} MB",
                    f"{result['runs'][m].get('size', {}).get('ratio', float('nan')):.3f}",
                ]
                for m, r in res.items()
            ],
        ),
    ]
    for s_name in (m for m in result["runs"] if m.startswith("sparsegpt")):
        s_blocks = result["runs"][s_name]["block_seconds"]
        d_name = s_name.replace("sparsegpt", "duogpt")
        d_name = d_name if d_name in result["runs"] else "duogpt"  # else the same first blocks of the whole run
        d_blocks = result["runs"][d_name]["block_seconds"][: len(s_blocks)]
        d, s = (sum(block_total(b) for b in blocks) for blocks in (d_blocks, s_blocks))
        lines.append(
            f"DuoGPT / SparseGPT time over the same {len(s_blocks)} blocks ({d_name} vs {s_name}): {d / s:.2f}x.\n"
        )
    lines.append("Extrapolated from the median DuoGPT block (linear in each phase's work):\n")
    ext = result["fit"]["extrapolated"]
    lines.append(markdown(["run", "hours on this machine"], [[k, f"{v['hours']:.1f}"] for k, v in ext.items()]))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=32, help="decoder blocks of the 7B-shaped model (default: 32)")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--work", type=Path, default=Path("runs/scale"), help="folder for the model and outputs")
    p.add_argument("--methods", default="duogpt", help="methods pruned on the whole model (default: duogpt)")
    p.add_argument(
        "--compare-blocks",
        type=int,
        default=4,
        help="SparseGPT (and DuoGPT) also on a model of only the first N blocks, for the time ratio (0: skip)",
    )
    p.add_argument(
        "--compare-methods",
        default="duogpt,sparsegpt",
        help="methods pruned on the first-N-blocks model (default: duogpt,sparsegpt; with sparsegpt alone, "
        "DuoGPT's side is the same first blocks of the whole run)",
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    from duogpt.runtime.bench import machine_info

    info = machine_info()
    input_bytes = make_model(args.work / "model", args.blocks)
    runs = {}
    for method in args.methods.split(","):
        out = args.work / f"out-{method}"
        runs[method] = (
            json.loads((out / "duogpt.json").read_text())
            if (out / "duogpt.json").is_file()
            else prune(args.work / "model", out, method, args.nsamples, args.seqlen)
        )
    if args.compare_blocks:  # the first N blocks are the same tensors (one seeded generator, blocks first)
        small = args.work / f"model-{args.compare_blocks}-blocks"
        make_model(small, args.compare_blocks)
        for method in args.compare_methods.split(","):
            out = args.work / f"out-{method}-{args.compare_blocks}-blocks"
            runs[f"{method} ({args.compare_blocks} blocks)"] = (
                json.loads((out / "duogpt.json").read_text())
                if (out / "duogpt.json").is_file()
                else prune(small, out, method, args.nsamples, args.seqlen)
            )
    tokens = args.nsamples * args.seqlen
    targets = {
        "7B, 32 blocks, these tokens": ("7B", tokens),
        "7B, 32 blocks, 128 x 2048 tokens": ("7B", 128 * 2048),
        "70B, 80 blocks, 128 x 2048 tokens": ("70B", 128 * 2048),
    }
    result = {
        "blocks": args.blocks,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "input_gb": input_bytes / 1e9,
        "machine": f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}",
        "runs": runs,
        "fit": fit_and_extrapolate(runs.get("duogpt", next(iter(runs.values())))["block_seconds"], tokens, targets),
    }
    text = report_markdown(result)
    print(text)
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
    if args.markdown:
        write_text(args.markdown, "# Scale: pruning a 7B-shaped model out of core\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
