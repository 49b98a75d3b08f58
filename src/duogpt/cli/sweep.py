"""duogpt sweep: a preset grid of prunes and evaluations, resumable, with tables and plots."""

from __future__ import annotations

from dataclasses import replace

from duogpt import checks
from duogpt.cli import options
from duogpt.errors import UsageError
from duogpt.experiments.presets import PRESETS, get_preset
from duogpt.experiments.sweep import SweepOptions, run_sweep


def add(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="methods x sparsity settings with tables and plots",
        description="Run a preset grid of prunes and evaluations (resumable), writing results.json, "
        "results.csv, results.md and PNG plots into --out.",
    )
    p.add_argument("--preset", default="quick", help="paper, quick or an ablate-* preset (default: %(default)s)")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.add_argument("--out", metavar="DIR", help="output directory; an existing sweep there is resumed")
    p.add_argument("--model", default=None, help="hub id or local model (default: the embedded model)")
    options.text_source(p, "--calib", "calibration text")
    options.text_source(p, "--text", "evaluation text")
    options.cross_text(p)
    options.positive(p, "--nsamples", "calibration sequences (default: the preset's)")
    options.positive(p, "--seqlen", "tokens per sequence and window (default: the preset's)")
    options.positive(p, "--eval-windows", "evaluation windows (default: the preset's)")
    p.add_argument(
        "--task-items",
        type=checks.parse(checks.integer),
        help="items per built-in task, 0 for none (default: the preset's)",
    )
    p.add_argument("--no-speed", action="store_true", help="skip the measured decode speedups")
    p.add_argument("--no-save-models", action="store_true", help="do not save the structured baselines' models")
    p.add_argument(
        "--seed",
        type=checks.parse(checks.integer),
        default=0,
        help="seed for samples and task items (default: %(default)s)",
    )
    options.quiet(p, "no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.list:
        for p in PRESETS.values():
            print(f"{p.name:<18} {p.description}")
        return 0
    if args.out is None:
        raise UsageError("--out DIR is required: the folder for results.json, results.csv, results.md and plots")
    if args.task_items is not None and args.task_items < 0:
        raise UsageError(f"--task-items {args.task_items} is negative: pass 0 for no tasks or a positive count")
    preset = get_preset(args.preset)
    overrides = {k: getattr(args, k) for k in ("nsamples", "seqlen", "eval_windows", "task_items")}
    preset = replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    opts = SweepOptions(
        model=args.model,
        task_items=preset.task_items,
        measure_speed=preset.measure_speed and not args.no_speed,
        save_models=not args.no_save_models,
        seed=args.seed,
    )
    command = "duogpt " + " ".join(args.argv)
    cross = options.cross_source(args.cross_text)
    _, text = run_sweep(
        preset, args.out, opts, args.calib, args.text, not args.quiet, command=command, cross_text=cross
    )
    print(text)
    return 0
