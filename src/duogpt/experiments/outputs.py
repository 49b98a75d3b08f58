"""A finished sweep as files: results.json, results.csv, results.md and PNG plots."""

from __future__ import annotations

import datetime
import json
import os
import re
import statistics
from pathlib import Path

from duogpt.experiments import plots
from duogpt.experiments.presets import Preset, tag
from duogpt.files import write_text
from duogpt.report import csv_text, markdown

CSV_COLUMNS = [
    "label",
    "method",
    "kind",
    "target_weight_sparsity",
    "target_act_sparsity",
    "variant",
    "weight_sparsity",
    "activation_sparsity",
    "perplexity",
    "cross_perplexity",
    "last_word_accuracy",
    "cloze_accuracy",
    "mean_accuracy",
    "estimated_speedup",
    "measured_speedup",
    "prune_seconds",
    "parameters",
]


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _variant(r: dict, field: str | None):
    return None if field is None else r["settings"].get(field)


def results_table(results: list[dict], variant_field: str | None = None) -> str:
    has_tasks = any(r.get("tasks") for r in results)
    has_cross = any(r.get("cross_perplexity") is not None for r in results)
    header = ["run", "method", "target w/x", "weight sp.", "act. sp.", "PPL", "PPL halves"]
    header += ["PPL cross-domain"] if has_cross else []
    header += [variant_field] if variant_field else []
    header += ["last word", "cloze", "mean acc."] if has_tasks else []
    header += ["est. speedup", "measured", "prune s"]
    rows = []
    for r in results:
        act = r["activation_sparsity"]
        row = [
            r["label"],
            r["method"],
            f"{r['target_weight_sparsity']:.0%}/{r['target_act_sparsity']:.0%}" if r["kind"] != "structured" else "",
            f"{r['weight_sparsity']:.3f}",
            "dense" if act is None else f"{act:.3f}",
            f"{r['perplexity']:.2f}",
            " / ".join(f"{h:.1f}" for h in r["half_perplexities"]),
        ]
        row += [_fmt(r.get("cross_perplexity"), ".2f")] if has_cross else []
        row += [str(_variant(r, variant_field))] if variant_field else []
        if has_tasks:
            tasks = r.get("tasks", {})
            row += [
                _task_cell(tasks.get("last_word")),
                _task_cell(tasks.get("cloze")),
                _fmt(r.get("mean_accuracy"), ".3f"),
            ]
        row += [
            f"{r['estimated_speedup']:.2f}x",
            "" if r.get("measured_speedup") is None else f"{r['measured_speedup']:.2f}x",
            f"{r['prune_seconds']:.0f}",
        ]
        rows.append(row)
    return markdown(header, rows)


def _task_cell(t: dict | None) -> str:
    return "" if t is None else f"{t['accuracy']:.3f} ({t['ci_low']:.2f}-{t['ci_high']:.2f})"


def _versus(duo: dict, o: dict, other: str, key: str) -> str:
    verdict = "lower" if duo[key] < o[key] else "NOT lower"
    return f"perplexity {duo[key]:.2f} vs {other} {o[key]:.2f} (ratio {duo[key] / o[key]:.3f}, {verdict})"


def comparisons(results: list[dict], preset: Preset) -> list[str]:
    """The paper's comparisons, as sentences with ratios."""
    by = {r["label"]: r for r in results}
    lines = []
    for pw, px in preset.settings:
        t = tag(pw, px)
        duo = by.get(f"duogpt-{t}")
        if duo is None:
            continue
        for other in ("sparsegpt", "wanda"):
            o = by.get(f"{other}-{t}")
            if o is not None:
                lines.append(f"- {pw:.0%}/{px:.0%}: DuoGPT " + _versus(duo, o, other, "perplexity"))
                if duo.get("cross_perplexity") and o.get("cross_perplexity"):
                    lines.append("  cross-domain: DuoGPT " + _versus(duo, o, other, "cross_perplexity"))
        structured = [by[k] for k in (f"shortgpt-{t}", f"flap-{t}") if k in by]
        if structured and duo.get("mean_accuracy") is not None:
            best = max(structured, key=lambda r: r["mean_accuracy"])
            verdict = "above" if duo["mean_accuracy"] > best["mean_accuracy"] else "NOT above"
            lines.append(
                f"- {pw:.0%}/{px:.0%}: DuoGPT mean accuracy {duo['mean_accuracy']:.3f} at an estimated "
                f"{duo['estimated_speedup']:.2f}x vs the best structured baseline ({best['method']}) "
                f"{best['mean_accuracy']:.3f} at {best['estimated_speedup']:.2f}x ({verdict}; "
                f"perplexity {duo['perplexity']:.1f} vs {best['perplexity']:.1f})"
            )
    ratios = {}
    for r in results:
        if r.get("measured_speedup"):
            ratios.setdefault(r["kind"], []).append(r["measured_speedup"] / r["estimated_speedup"])
    for kind, values in sorted(ratios.items()):
        lines.append(
            f"- cost model vs measurement ({kind}): measured / estimated speedup, median "
            f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f}, {len(values)} cells)"
        )
    return lines


def write_outputs(
    out: str | Path,
    preset: Preset,
    results: list[dict],
    meta: dict,
    plot_dir: str | Path | None = None,
    link_base: str | Path | None = None,
) -> str:
    """Write the sweep's files under ``out`` (plots under ``plot_dir``); returns the Markdown text.

    Image links are relative to ``link_base`` (default ``out``), the folder the text will live in.
    """
    out = Path(out)
    plot_dir = Path(plot_dir) if plot_dir else out / "plots"
    link_base = Path(link_base) if link_base else out
    meta = dict(meta, date=str(datetime.date.today()), preset=preset.name)
    write_text(out / "results.json", json.dumps({"meta": meta, "results": results}, indent=1))
    rows = []
    for r in results:
        rec = dict(r, variant=_variant(r, preset.variant_field))
        rows.append(["" if rec.get(c) is None else rec[c] for c in CSV_COLUMNS])
    write_text(out / "results.csv", csv_text(CSV_COLUMNS, rows))
    title = f"{meta['model']}, preset {preset.name}"
    images = _plots(results, plot_dir, title, preset)
    doc = [
        f"### Preset `{preset.name}`",
        "",
        f"{preset.description}.",
        f"Model: {meta['model']}. Data: {meta['data']}. Settings: {meta['settings']}.",
        f"Machine: {meta['machine']}. Date: {meta['date']}. Time: {meta['cell_seconds'] / 60:.1f} min over all "
        f"cells ({meta['seconds'] / 60:.1f} min in the last run). Command: `{meta['command']}`.",
        "",
        results_table(results, preset.variant_field),
        *comparisons(results, preset),
        "",
        *[f"![{name}]({os.path.relpath(path, link_base)})" for name, path in images],
        "",
    ]
    text = "\n".join(doc)
    write_text(out / "results.md", text)
    return text


def preset_sections(text: str) -> dict[str, str]:
    """The sections of a document of sweep results (``write_outputs``' text), by preset name, in order."""
    marks = list(re.finditer(r"^### Preset `([^`]+)`$", text, re.M))
    ends = [m.start() for m in marks[1:]] + [len(text)] * bool(marks)
    return {m.group(1): text[m.start() : end] for m, end in zip(marks, ends, strict=True)}


def _plots(results: list[dict], plot_dir: Path, title: str, preset: Preset) -> list[tuple[str, Path]]:
    """Draw the sweep's plots; returns (name, path) of each."""
    made = []
    if preset.variant_field == "variant":  # settings compared at equal estimated speedups

        def series(r):
            return f"{r['method']} {r['settings'].get('variant', '')}".strip()

        for metric, name in (("perplexity", "perplexity"), ("cross_perplexity", "cross-domain perplexity")):
            path = plot_dir / f"{preset.name}-{metric.replace('_', '-')}-vs-speedup.png"
            plots.quality_vs_speedup(results, path, metric, name, False, title, series)
            made.append((f"{name} vs estimated speedup", path))
        return made
    if preset.variant_field is not None:
        return []  # an ablation's table is its result
    path = plot_dir / f"{preset.name}-ppl-vs-sparsity.png"
    plots.perplexity_vs_sparsity(results, path, title)
    made.append(("perplexity vs sparsity", path))
    path = plot_dir / f"{preset.name}-ppl-vs-speedup.png"
    plots.quality_vs_speedup(results, path, "perplexity", "perplexity", False, title)
    made.append(("perplexity vs estimated speedup", path))
    if any(r.get("mean_accuracy") is not None for r in results):
        path = plot_dir / f"{preset.name}-accuracy-vs-speedup.png"
        plots.quality_vs_speedup(results, path, "mean_accuracy", "mean accuracy (built-in tasks)", True, title)
        made.append(("accuracy vs estimated speedup", path))
    return made
