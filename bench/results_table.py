"""The README's results table: every method at 30/30 and 50/50 on the default model.

Same calibration samples and seed for every method, thresholds calibrated on each
pruned model's own compressed stream, the same evaluation windows of the Brown
evaluation part; measured sparsities and prune wall time beside every perplexity.
Resumable: finished cells in OUT/cells are reused.
Usage: python bench/results_table.py [--out runs/results] [--doc docs/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json

from duogpt.report import csv_text, write_atomic
from duogpt.sweep import Cell, machine, prepare, results_markdown, run_grid

SETTINGS = [(0.3, 0.3), (0.5, 0.5)]
METHODS = ["magnitude", "wanda", "sparsegpt", "duogpt"]


def cells() -> list[Cell]:
    out = [Cell("dense", "dense")]
    for pw, px in SETTINGS:
        tag = f"{pw:.0%}-{px:.0%}"
        out.append(Cell(f"activation-only-{tag}", "activation-only", 0.0, px))
        out += [Cell(f"{m}-{tag}", m, pw, px) for m in METHODS]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--doc", default="docs/RESULTS.md")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--windows", type=int, default=32)
    args = parser.parse_args()
    grid = prepare(None, "brown", args.nsamples, 512, 0, "brown", "eval", args.windows)
    results = run_grid(cells(), args.out, None, grid)
    by_label = {r["label"]: r for r in results}
    ratios = []
    for pw, px in SETTINGS:
        tag = f"{pw:.0%}-{px:.0%}"
        duo, sgpt = by_label[f"duogpt-{tag}"], by_label[f"sparsegpt-{tag}"]
        ratios.append(
            f"- {tag}: DuoGPT / SparseGPT perplexity {duo['perplexity'] / sgpt['perplexity']:.3f}, "
            f"prune wall time {duo['prune_seconds'] / sgpt['prune_seconds']:.2f}x"
        )
    doc = [
        "# Results on the default model",
        "",
        f"Model: SmolLM2-135M-Instruct (default, dequantized from Q4_1 to float32). {grid.description}.",
        "Every pruned model's activation thresholds are calibrated on its own compressed stream (pruned",
        "blocks, sparsifiers on) with the same samples; `act. sp.` is the sparsity measured at evaluation.",
        "`PPL halves` is the perplexity of each half of the evaluation windows (the spread).",
        f"Machine: {machine()}. Date: {datetime.date.today()}. Regenerate: `python bench/results_table.py`.",
        "",
        results_markdown(results),
        "Ratios:",
        *ratios,
        "",
    ]
    write_atomic(args.doc, "\n".join(doc))
    header = [
        "label",
        "method",
        "target_weight_sparsity",
        "target_act_sparsity",
        "weight_sparsity",
        "activation_sparsity",
        "perplexity",
        "prune_seconds",
        "tokens",
    ]
    write_atomic(args.doc.replace(".md", ".csv"), csv_text(header, [[r[h] for h in header] for r in results]))
    write_atomic(args.doc.replace(".md", ".json"), json.dumps(results, indent=1))
    print("\n".join(doc))


if __name__ == "__main__":
    main()
