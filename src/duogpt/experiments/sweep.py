"""Sweeps: a preset's cells (duogpt/presets.py) on one model, resumable cell by cell.

Every cell loads the model afresh and uses the same calibration samples, evaluation
windows and task items. Each finished cell is written to ``OUT/cells/<label>.json`` and
skipped when the sweep runs again, so a stopped sweep restarts where it was. Per cell:
perplexity with the sparsifiers active, the built-in zero-shot tasks, the decode cost
model's estimated speedup and, where the kernels or a smaller model apply, the decode
speedup measured side by side on this machine.

What cells share is the data; the calibration statistics themselves (Gram matrices of
each block's inputs) depend on every earlier block of the method's own pruned model, so
no two methods (or settings) can share them past the first block.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from duogpt import corpus
from duogpt.api import calibrate_activation_sparsity
from duogpt.config import PruneConfig, fields
from duogpt.evaluation.perplexity import perplexity
from duogpt.evaluation.tasks import cloze_items, last_word_items, run_builtin_tasks
from duogpt.experiments import outputs, structured
from duogpt.experiments.presets import Cell, Preset, plan_cells
from duogpt.files import run_lock, write_text
from duogpt.logs import log, muted
from duogpt.models import load_model
from duogpt.pruning import sparsify
from duogpt.pruning.alpha_choice import HELD_SEQUENCES
from duogpt.pruning.pipeline import prune_model
from duogpt.runtime import bench
from duogpt.runtime.costmodel import decode_cost
from duogpt.runtime.linear import decode_paths, to_sparse_runtime

SPEED_PROMPT = "The jury said it did find that many of Georgia's registration laws"


@dataclass
class GridData:
    """What every cell shares: calibration samples, evaluation windows, task text."""

    samples: torch.Tensor
    windows: torch.Tensor
    task_text: str
    description: str
    cross_windows: torch.Tensor | None = None  # windows of a second text of another domain
    held_out: Callable[[], torch.Tensor] | None = None  # --alpha auto's held-out windows, drawn when a cell asks


@dataclass
class SweepOptions:
    model: str | None = None
    task_items: int = 64
    task_context: int = 128
    measure_speed: bool = True
    speed_tokens: int = 24
    speed_rounds: int = 3
    save_models: bool = True
    seed: int = 0


def prepare(
    tokenizer,
    calib: str,
    nsamples: int,
    seqlen: int,
    seed: int,
    eval_text: str,
    eval_split: str,
    eval_windows: int,
    cross_text: str | None = None,
) -> GridData:
    bos = corpus.bos_token(tokenizer)
    calib_ids = corpus.tokenize(tokenizer, corpus.load_text(calib, "calib"))
    samples = corpus.calibration_samples(calib_ids, nsamples, seqlen, seed, bos)
    text = corpus.load_text(eval_text, eval_split)
    windows = corpus.eval_windows(corpus.tokenize(tokenizer, text), seqlen, eval_windows, bos)
    desc = (
        f"calibration: {nsamples} x {seqlen} tokens of {calib} (seed {seed}); evaluation: "
        f"{windows.shape[0]} x {seqlen} tokens of the {eval_split} part of {eval_text}"
        + ("" if bos is None else f"; each sample and window starts with BOS ({bos})")
    )
    cross = None
    if cross_text is not None:
        ids = corpus.tokenize(tokenizer, corpus.load_text(cross_text, eval_split))
        cross = corpus.eval_windows(ids, seqlen, eval_windows, bos)
        desc += f"; cross-domain: {cross.shape[0]} x {seqlen} tokens of the {eval_split} part of {cross_text}"
    held = functools.partial(corpus.held_out_samples, calib_ids, HELD_SEQUENCES, nsamples, seqlen, seed, bos)
    return GridData(samples, windows, text, desc, cross, held)


def _prune(cell: Cell, lm, grid: GridData, progress: bool) -> tuple[dict | None, float]:
    """Apply the cell's compression in place; returns (thresholds or None, seconds)."""
    start = time.perf_counter()
    thresholds = None
    if cell.kind == "activation-only":
        thresholds = calibrate_activation_sparsity(lm, grid.samples, cell.act_sparsity, progress=progress)
    elif cell.kind == "dual":
        settings = {k: v for k, v in cell.settings.items() if k in {f.name for f in fields()}}
        settings.setdefault("nsamples", grid.samples.shape[0])
        cfg = PruneConfig(
            method=cell.method,
            weight_sparsity=cell.weight_sparsity,
            act_sparsity=cell.act_sparsity,
            seqlen=grid.samples.shape[1],
            **settings,
        )
        held = grid.held_out() if cfg.chooses_alpha and grid.held_out is not None else None
        thresholds = prune_model(lm, grid.samples[: cfg.nsamples], cfg, progress=progress, held=held).thresholds
    elif cell.method == "shortgpt":
        removed = structured.remove_blocks(lm, cell.settings["remove_blocks"], grid.samples)
        cell.settings["removed_blocks"] = removed
    elif cell.method == "flap":
        info = structured.prune_width(
            lm, grid.samples, cell.settings["mlp_fraction"], cell.settings["kv_group_fraction"]
        )
        cell.settings.update({f"result_{k}": v for k, v in info.items()})
    return thresholds, time.perf_counter() - start


def _measure_speed(cell: Cell, lm, tokenizer, thresholds, opts: SweepOptions) -> dict | None:
    """Decode tokens/s side by side: dense vs sparse runtime, or original vs smaller model."""
    ids = tokenizer(SPEED_PROMPT, return_tensors="pt")["input_ids"]
    if cell.kind in ("dual", "activation-only"):
        sparsify.uninstall(lm)
        decode_paths(lm)  # the dense side gets the sparse runtime's shortcuts for dense weights
        sparse = to_sparse_runtime(copy.deepcopy(lm))
        for model in (lm, sparse):
            sparsify.install(model, thresholds)
        decode_paths(sparse)  # the linears' paths depend on their sparsifiers
        base, fast, _, _ = bench.decode_rates(lm, sparse, ids, opts.speed_tokens, opts.speed_rounds)
        how = "sparse runtime (packed weights, kernel) vs dense runtime (masked weights), same thresholds"
    elif cell.kind == "structured":
        reference, _ = load_model(opts.model)
        base, fast = bench.compare_decode(reference, lm, ids, opts.speed_tokens, opts.speed_rounds)
        how = "smaller model vs the original, dense runtime"
    else:
        return None
    return {"baseline_tok_s": base, "tok_s": fast, "speedup": fast / base, "how": how}


def run_cell(cell: Cell, grid: GridData, opts: SweepOptions, out: Path | None = None, progress: bool = False) -> dict:
    """Compress (unless dense) and evaluate one cell on a freshly loaded model."""
    lm, tokenizer = load_model(opts.model)
    torch.manual_seed(opts.seed)
    context = grid.windows.shape[1]
    dense_bytes = decode_cost(lm, context=context, sparse_runtime=False).total
    thresholds, seconds = _prune(cell, lm, grid, progress)
    if cell.kind == "structured" and opts.save_models and out is not None:
        structured.save_model(lm, tokenizer, out / "models" / cell.label, force=True)
    result = perplexity(lm, grid.windows, progress=progress)
    tasks = []
    if opts.task_items:
        tasks = run_builtin_tasks(
            lm,
            tokenizer,
            grid.task_text,
            n_items=opts.task_items,
            seed=opts.seed,
            progress=progress,
            context_tokens=opts.task_context,
        )
    sparse_runtime = cell.kind in ("dual", "activation-only")
    cost = decode_cost(lm, result.per_layer_activation_sparsity, context=context, sparse_runtime=sparse_runtime)
    cross = perplexity(lm, grid.cross_windows, progress=progress) if grid.cross_windows is not None else None
    speed = _measure_speed(cell, lm, tokenizer, thresholds, opts) if opts.measure_speed else None
    record = {
        "label": cell.label,
        "method": cell.method,
        "kind": cell.kind,
        "target_weight_sparsity": cell.weight_sparsity,
        "target_act_sparsity": cell.act_sparsity,
        "settings": cell.settings,
        "prune_seconds": seconds,
        **result.to_json(),
        "cross_perplexity": cross and cross.perplexity,
        "cross_half_perplexities": cross and list(cross.half_perplexities),
        "tasks": {t.name: t.to_json() for t in tasks},
        "mean_accuracy": sum(t.accuracy for t in tasks) / len(tasks) if tasks else None,
        "decode_bytes": cost.to_json(),
        "estimated_speedup": dense_bytes / cost.total,
        "measured": speed,
        "measured_speedup": speed and speed["speedup"],
        "parameters": sum(p.numel() for p in lm.parameters()),
    }
    for t in tasks:
        record[f"{t.name}_accuracy"] = t.accuracy
    return record


def grid_key(grid: GridData, opts: SweepOptions) -> str:
    """What a finished cell must share with the sweep to be reused: data, model and task settings."""
    what = [grid.description, opts.model, opts.task_items, opts.task_context, opts.seed]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def run_grid(
    cells: list[Cell], out: str | Path, grid: GridData, opts: SweepOptions, progress: bool = True
) -> list[dict]:
    """Run every unfinished cell, saving each as it completes; returns all results in order."""
    out = Path(out)
    cell_dir = out / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    results = []
    key = grid_key(grid, opts)
    with muted():  # the per-linear lines would bury the grid's progress bar
        bar = tqdm(cells, desc="sweep", unit="cell", disable=not progress)
        for cell in bar:
            path = cell_dir / f"{cell.label}.json"
            if path.is_file():
                saved = json.loads(path.read_text())
                if saved.get("grid") == key:
                    results.append(saved)
                    continue
                log.warning("%s was made with other data or settings: running it again", path)
            bar.set_postfix_str(cell.label)
            t0 = time.perf_counter()
            record = run_cell(cell, grid, opts, out, progress=False)
            record["cell_seconds"] = time.perf_counter() - t0
            record["grid"] = key
            write_text(path, json.dumps(record, indent=1))
            results.append(record)
    return results


def machine() -> str:
    info = bench.machine_info()
    return f"{info['cpu']} ({info['machine']}), {info['threads']} threads, torch {info['torch']}"


def describe(preset: Preset) -> str:
    grid = ", ".join(f"{pw:.0%}/{px:.0%}" for pw, px in preset.settings)
    variants = f"; {preset.variant_field} in {list(preset.variants)}" if preset.variant_field else ""
    return f"settings {grid}; methods {', '.join(preset.methods)}{variants}"


def run_sweep(
    preset: Preset,
    out: str | Path,
    opts: SweepOptions,
    calib: str = corpus.DEFAULT_SOURCE,
    eval_text: str = corpus.DEFAULT_SOURCE,
    progress: bool = True,
    plot_dir: str | Path | None = None,
    link_base: str | Path | None = None,
    command: str = "",
    cross_text: str | None = corpus.CROSS_SOURCE,
) -> tuple[list[dict], str]:
    """Run (or resume) ``preset`` into ``out``; returns the records and the Markdown summary.

    Every cell is also scored on ``cross_text`` (a text of another domain; None: not).
    A second sweep into the same ``out`` refuses to start while this one runs.
    """
    with run_lock(out, "sweep"):
        texts = (calib, eval_text, cross_text)
        return _run_sweep(preset, out, opts, texts, progress, plot_dir, link_base, command)


def _run_sweep(preset, out, opts, texts, progress, plot_dir, link_base, command):
    start = time.perf_counter()
    calib, eval_text, cross_text = texts
    lm, tokenizer = load_model(opts.model)
    grid = prepare(
        tokenizer, calib, preset.nsamples, preset.seqlen, opts.seed, eval_text, "eval", preset.eval_windows, cross_text
    )
    if opts.task_items:  # fail before the first cell if the text cannot give the task items
        last_word_items(grid.task_text, tokenizer, opts.task_items, opts.seed, opts.task_context)
        cloze_items(grid.task_text, opts.task_items, opts.seed)
    cells = plan_cells(preset, lm.config, next(lm.parameters()).element_size())
    del lm
    results = run_grid(cells, out, grid, opts, progress)
    meta = {
        "model": opts.model or "SmolLM2-135M-Instruct (default, float32)",
        "data": grid.description,
        "settings": describe(preset)
        + f"; {opts.task_items} items per built-in task ({opts.task_context}-token contexts); "
        f"decode cost at a {preset.seqlen}-token context",
        "machine": machine(),
        "seconds": time.perf_counter() - start,
        "cell_seconds": sum(r.get("cell_seconds", 0.0) for r in results),
        "command": command or f"duogpt sweep --preset {preset.name} --out {out}",
    }
    text = outputs.write_outputs(out, preset, results, meta, plot_dir, link_base)
    return results, text
