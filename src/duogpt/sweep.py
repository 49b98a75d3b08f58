"""Grids of prune + eval runs on one model, resumable cell by cell.

Every cell uses the same calibration samples and evaluation windows; each finished
cell is written to ``OUT/cells/<label>.json`` and skipped when the grid runs again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from duogpt import calibrate_activation_sparsity, data
from duogpt.evaluate import perplexity
from duogpt.models import load_model
from duogpt.pipeline import PruneConfig, prune_model
from duogpt.report import markdown, write_atomic


@dataclass
class Cell:
    """One run: ``method`` 'dense', 'activation-only' or a pruning method."""

    label: str
    method: str
    weight_sparsity: float = 0.0
    act_sparsity: float = 0.0
    settings: dict = field(default_factory=dict)


@dataclass
class GridData:
    """What every cell shares: calibration samples and evaluation windows."""

    samples: torch.Tensor
    windows: torch.Tensor
    description: str


def prepare(
    model: str | None,
    calib: str,
    nsamples: int,
    seqlen: int,
    seed: int,
    eval_text: str,
    eval_split: str,
    eval_windows: int,
) -> GridData:
    _, tokenizer = load_model(model)
    samples = data.calibration_samples(data.tokenize(tokenizer, data.load_text(calib, "calib")), nsamples, seqlen, seed)
    windows = data.eval_windows(data.tokenize(tokenizer, data.load_text(eval_text, eval_split)), seqlen, eval_windows)
    desc = (
        f"calibration: {nsamples} x {seqlen} tokens of {calib} (seed {seed}); evaluation: "
        f"{windows.shape[0]} x {seqlen} tokens of the {eval_split} part of {eval_text}"
    )
    return GridData(samples, windows, desc)


def run_cell(cell: Cell, model: str | None, grid: GridData, progress: bool = True) -> dict:
    """Prune (unless dense) and evaluate one cell on a freshly loaded model."""
    lm, _ = load_model(model)
    torch.manual_seed(0)
    prune_seconds = 0.0
    if cell.method == "activation-only":
        start = time.perf_counter()
        calibrate_activation_sparsity(lm, grid.samples, cell.act_sparsity, progress=progress)
        prune_seconds = time.perf_counter() - start
    elif cell.method != "dense":
        cfg = PruneConfig(
            method=cell.method,
            weight_sparsity=cell.weight_sparsity,
            act_sparsity=cell.act_sparsity,
            nsamples=grid.samples.shape[0],
            seqlen=grid.samples.shape[1],
            **cell.settings,
        )
        prune_seconds = prune_model(lm, grid.samples, cfg, progress=progress).seconds
    result = perplexity(lm, grid.windows, progress=progress)
    return {
        "label": cell.label,
        "method": cell.method,
        "target_weight_sparsity": cell.weight_sparsity,
        "target_act_sparsity": cell.act_sparsity,
        "settings": cell.settings,
        "prune_seconds": prune_seconds,
        **result.to_json(),
    }


def run_grid(
    cells: list[Cell], out: str | Path, model: str | None, grid: GridData, progress: bool = True
) -> list[dict]:
    """Run every unfinished cell, saving each as it completes; returns all results in order."""
    cell_dir = Path(out) / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, cell in enumerate(cells, 1):
        path = cell_dir / f"{cell.label}.json"
        if path.is_file():
            results.append(json.loads(path.read_text()))
            continue
        print(f"[{i}/{len(cells)}] {cell.label}", flush=True)
        record = run_cell(cell, model, grid, progress)
        write_atomic(path, json.dumps(record, indent=1))
        results.append(record)
    return results


def machine() -> str:
    from duogpt.bench import machine_info

    info = machine_info()
    return f"{info['cpu']} ({info['machine']}), {info['threads']} threads, torch {info['torch']}"


def results_markdown(results: list[dict], extra_columns: tuple[str, ...] = ()) -> str:
    header = ["run", "method", "target w/x", "weight sp.", "act. sp.", "PPL", "PPL halves", "prune s", *extra_columns]
    rows = []
    for r in results:
        act = r["activation_sparsity"]
        rows.append(
            [
                r["label"],
                r["method"],
                f"{r['target_weight_sparsity']:.0%}/{r['target_act_sparsity']:.0%}",
                f"{r['weight_sparsity']:.3f}",
                "dense" if act is None else f"{act:.3f}",
                f"{r['perplexity']:.2f}",
                " / ".join(f"{h:.1f}" for h in r["half_perplexities"]),
                f"{r['prune_seconds']:.0f}",
                *[str(r["settings"].get(c, "")) for c in extra_columns],
            ]
        )
    return markdown(header, rows)
