"""Ablation of DuoGPT's residual scale alpha and target ridge on the default model.

Evaluates on held-out windows of the Brown *calibration* part (not the evaluation part,
which is kept for the results table), so the defaults are not chosen on test text.
Usage: python bench/ablate_alpha.py [--out runs/ablate-alpha] [--doc docs/ablation-alpha.md]
"""

from __future__ import annotations

import argparse
import datetime

from duogpt.report import write_atomic
from duogpt.sweep import Cell, machine, prepare, results_markdown, run_grid

SETTINGS = [(0.3, 0.3), (0.5, 0.5)]
GRID = [(0.0, 0.1), (0.25, 0.1), (0.5, 0.1), (1.0, 0.1), (0.5, 1.0), (1.0, 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ablate-alpha")
    parser.add_argument("--doc", default="docs/ablation-alpha.md")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--windows", type=int, default=16)
    args = parser.parse_args()
    grid = prepare(None, "brown", args.nsamples, 512, 0, "brown", "calib", args.windows)
    cells = [Cell(f"sparsegpt-{pw:.0%}-{px:.0%}", "sparsegpt", pw, px) for pw, px in SETTINGS]
    cells += [
        Cell(f"duogpt-{pw:.0%}-{px:.0%}-a{alpha}-r{ridge}", "duogpt", pw, px, {"alpha": alpha, "ridge": ridge})
        for pw, px in SETTINGS
        for alpha, ridge in GRID
    ]
    results = run_grid(cells, args.out, None, grid)
    doc = [
        "# Ablation: DuoGPT residual scale `alpha` and target ridge",
        "",
        f"Model: SmolLM2-135M-Instruct (default). {grid.description}. The evaluation windows come from",
        "the calibration part of the Brown corpus (held out from the results table's evaluation part);",
        "calibration windows are random, so a small overlap with them is possible.",
        f"Machine: {machine()}. Date: {datetime.date.today()}. Regenerate: `python bench/ablate_alpha.py`.",
        "",
        results_markdown(results, extra_columns=("alpha", "ridge")),
    ]
    write_atomic(args.doc, "\n".join(doc))
    print("\n".join(doc))


if __name__ == "__main__":
    main()
