"""Command line: ``duogpt prune | eval | generate | bench | sweep | report``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from duogpt import __version__
from duogpt.errors import UsageError
from duogpt.pipeline import PruneConfig
from duogpt.solvers import CORRECTIONS, METHODS

_D = PruneConfig()


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: pass a fraction such as 0.5") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1): pass a fraction such as 0.5")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _nonneg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a non-negative number")
    return value


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (with the fix: see --help), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="duogpt",
        description="Dual-sparse pruning (weights + activations) of Hugging Face causal LMs.",
    )
    parser.add_argument("--version", action="version", version=f"duogpt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "prune",
        help="prune a model to dual sparsity and save it",
        description="Prune a model to dual sparsity (weights + activations) and save a checkpoint.",
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="hub id or local checkpoint (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument("--method", choices=METHODS, default=_D.method, help="pruning method (default: %(default)s)")
    p.add_argument(
        "--weight-sparsity",
        type=_fraction,
        default=_D.weight_sparsity,
        metavar="P",
        help="fraction of weights to prune (default: %(default)s)",
    )
    p.add_argument(
        "--act-sparsity",
        type=_fraction,
        default=_D.act_sparsity,
        metavar="P",
        help="fraction of activations zeroed at run time (default: %(default)s)",
    )
    p.add_argument(
        "--pattern",
        default=_D.pattern,
        metavar="N:M",
        help="'unstructured' or N:M such as 2:4, 4:8 (default: %(default)s)",
    )
    p.add_argument(
        "--alpha", type=_nonneg, default=_D.alpha, help="DuoGPT residual-correction scale (default: %(default)s)"
    )
    p.add_argument(
        "--ridge",
        type=_nonneg,
        default=_D.ridge,
        help="DuoGPT target ridge, fraction of mean diag(H) (default: %(default)s)",
    )
    p.add_argument(
        "--correction",
        choices=CORRECTIONS,
        default=_D.correction,
        help="DuoGPT residual correction (default: %(default)s)",
    )
    p.add_argument(
        "--hessian",
        choices=("sparse", "dense"),
        default=_D.hessian,
        help="DuoGPT Hessian from the sparse inputs, or the dense ones without correction (default: %(default)s)",
    )
    p.add_argument(
        "--calib",
        default=_D.calib,
        metavar="SOURCE",
        help="calibration text: brown, wikitext2, c4, or a .txt/.jsonl file (default: %(default)s)",
    )
    p.add_argument(
        "--nsamples", type=_positive, default=_D.nsamples, help="calibration sequences (default: %(default)s)"
    )
    p.add_argument(
        "--seqlen", type=_positive, default=_D.seqlen, help="tokens per calibration sequence (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=_D.seed, help="seed for sample selection (default: %(default)s)")
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=_D.batch_size,
        help="calibration sequences per forward pass (default: %(default)s)",
    )
    p.add_argument(
        "--percdamp",
        type=_nonneg,
        default=_D.percdamp,
        help="OBS dampening, fraction of mean diag(H) (default: %(default)s)",
    )
    p.add_argument(
        "--dense-prefill", action="store_true", help="leave prompt (prefill) activations dense; sparsify decode only"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output checkpoint directory (must not exist or be empty)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if an interrupted run left its state in OUT.duogpt-work",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-linear log lines")

    e = sub.add_parser(
        "eval",
        help="perplexity of a model or pruned checkpoint",
        description="Perplexity of a model or pruned checkpoint, with its activation sparsifiers active.",
    )
    e.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL_OR_DIR",
        help="hub id, checkpoint, or duogpt output directory (default: the embedded model)",
    )
    e.add_argument(
        "--text",
        default="brown",
        metavar="SOURCE",
        help="evaluation text: brown, wikitext2, c4, or a .txt/.jsonl file (default: %(default)s)",
    )
    group = e.add_mutually_exclusive_group()
    group.add_argument(
        "--act-sparsity",
        type=_fraction,
        default=None,
        metavar="P",
        help="calibrate fresh thresholds for P on the calibration text (TEAL-style)",
    )
    group.add_argument(
        "--no-act-sparsity", action="store_true", help="remove the checkpoint's sparsifiers (dense activations)"
    )
    e.add_argument(
        "--calib", default="brown", metavar="SOURCE", help="text for --act-sparsity thresholds (default: %(default)s)"
    )
    e.add_argument("--seqlen", type=_positive, default=512, help="tokens per evaluation window (default: %(default)s)")
    e.add_argument(
        "--max-windows",
        type=_positive,
        default=32,
        help="evaluation windows, spread over the text (default: %(default)s)",
    )
    e.add_argument("--batch-size", type=_positive, default=4, help="windows per forward pass (default: %(default)s)")
    e.add_argument(
        "--tasks",
        metavar="LIST",
        help="comma-separated zero-shot tasks: built-in last_word, cloze (offline, over --text), "
        "or lm-eval task names such as piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa",
    )
    e.add_argument("--task-items", type=_positive, default=200, help="items per built-in task (default: %(default)s)")
    e.add_argument("--include-path", metavar="DIR", help="lm-eval: a folder of extra task YAMLs")
    e.add_argument("--limit", type=_positive, help="lm-eval: at most this many examples per task")
    e.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    e.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    g = sub.add_parser(
        "generate",
        help="greedy generation with decode tokens/s",
        description="Greedy generation; prints the text and decode tokens/s.",
    )
    g.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL_OR_DIR",
        help="model or duogpt directory (default: the embedded model)",
    )
    g.add_argument("--prompt", required=True, help="prompt text")
    g.add_argument("--max-new-tokens", type=_positive, default=32, help="tokens to generate (default: %(default)s)")
    g.add_argument(
        "--runtime",
        choices=("dense", "sparse"),
        default="sparse",
        help="dense: masked dense matmuls; sparse: the spMspV kernel at decode (default: %(default)s)",
    )

    b = sub.add_parser(
        "bench",
        help="kernel and decode benchmarks against dense",
        description="Dense vs dual-sparse benchmarks, side by side in one run.",
    )
    b.add_argument(
        "kind",
        choices=("gemv", "decode"),
        help="gemv: one linear at 7B and default-model shapes; decode: tokens/s of both runtimes",
    )
    b.add_argument("--checkpoint", metavar="DIR", help="decode: also time this pruned checkpoint")
    b.add_argument(
        "--layers",
        type=_positive,
        default=4,
        help="decode: blocks of the random 7B-shaped stack (default: %(default)s)",
    )
    b.add_argument("--repeats", type=_positive, default=50, help="gemv: timed calls per side (default: %(default)s)")
    b.add_argument("--quick", action="store_true", help="gemv: default-model shapes only, fewer repeats")
    b.add_argument("--json", metavar="PATH", help="write the records as JSON")
    b.add_argument("--markdown", metavar="PATH", help="write a Markdown summary")

    w = sub.add_parser(
        "sweep",
        help="methods x sparsity settings with tables and plots",
        description="Run a preset grid of prunes and evaluations (resumable), writing results.json, "
        "results.csv, results.md and PNG plots into --out.",
    )
    w.add_argument("--preset", default="quick", help="paper, quick or an ablate-* preset (default: %(default)s)")
    w.add_argument("--list", action="store_true", help="list the presets and exit")
    w.add_argument("--out", metavar="DIR", help="output directory; an existing sweep there is resumed")
    w.add_argument("--model", default=None, help="hub id or local model (default: the embedded model)")
    w.add_argument("--calib", default="brown", metavar="SOURCE", help="calibration text (default: %(default)s)")
    w.add_argument("--text", default="brown", metavar="SOURCE", help="evaluation text (default: %(default)s)")
    w.add_argument("--nsamples", type=_positive, help="calibration sequences (default: the preset's)")
    w.add_argument("--seqlen", type=_positive, help="tokens per sequence and window (default: the preset's)")
    w.add_argument("--eval-windows", type=_positive, help="evaluation windows (default: the preset's)")
    w.add_argument("--task-items", type=int, help="items per built-in task, 0 for none (default: the preset's)")
    w.add_argument("--no-speed", action="store_true", help="skip the measured decode speedups")
    w.add_argument("--no-save-models", action="store_true", help="do not save the structured baselines' models")
    w.add_argument("--seed", type=int, default=0, help="seed for samples and task items (default: %(default)s)")
    w.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser(
        "report",
        help="compare evaluation results in one table",
        description="Compare duogpt eval --json results; ratios are against the first file.",
    )
    r.add_argument("results", nargs="+", metavar="RESULT_JSON", help="files written by duogpt eval --json")
    r.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    r.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    return parser


def _report(args) -> int:
    from duogpt import report

    rows = report.table_rows(report.load_results(args.results))
    text = report.markdown(report.COLUMNS, rows)
    print(text, end="")
    if args.markdown:
        report.write_atomic(args.markdown, text)
    if args.csv:
        report.write_atomic(args.csv, report.csv_text(report.COLUMNS, rows))
    return 0


def _load_any(model: str | None, device: str = "cpu", runtime: str = "dense"):
    """(model, tokenizer, meta) from a duogpt directory, a plain checkpoint or a hub id."""
    from duogpt import checkpoint
    from duogpt.models import load_model
    from duogpt.runtime import to_sparse_runtime

    if model is not None and Path(model).is_dir():
        return checkpoint.load(model, device=device, runtime=runtime)
    lm, tokenizer = load_model(model, device=device)
    if runtime == "sparse":
        to_sparse_runtime(lm)
    return lm, tokenizer, None


def _generate(args) -> int:
    from duogpt.generate import generate

    model, tokenizer, _ = _load_any(args.model, runtime=args.runtime)
    result = generate(model, tokenizer, args.prompt, args.max_new_tokens)
    print(result.text)
    print(
        f"decode: {result.decode_tokens_per_second:.2f} tokens/s ({args.runtime} runtime, "
        f"{len(result.tokens)} new tokens, prefill {result.prefill_seconds:.2f} s)",
        file=sys.stderr,
    )
    return 0


def _bench(args) -> int:
    from duogpt import bench, report

    for path in (args.json, args.markdown):
        if path:
            report.check_writable(path)
    if args.kind == "gemv":
        shapes = bench.DEFAULT_MODEL_SHAPES if args.quick else None
        result = bench.gemv(shapes=shapes, repeats=10 if args.quick else args.repeats)
        text = bench.gemv_markdown(result)
    else:
        result = bench.decode(args.checkpoint, layers=args.layers)
        text = bench.decode_markdown(result)
    if args.json:
        report.write_atomic(args.json, json.dumps(result, indent=1))
    if args.markdown:
        report.write_atomic(args.markdown, text)
    print(text)
    return 0


def _prune(args) -> int:
    import duogpt

    model = duogpt.prune(
        args.model,
        method=args.method,
        weight_sparsity=args.weight_sparsity,
        act_sparsity=args.act_sparsity,
        out=args.out,
        device=args.device,
        progress=not args.quiet,
        pattern=args.pattern,
        alpha=args.alpha,
        ridge=args.ridge,
        correction=args.correction,
        hessian=args.hessian,
        calib=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        batch_size=args.batch_size,
        percdamp=args.percdamp,
        sparsify_prefill=not args.dense_prefill,
        force=args.force,
        resume=not args.no_resume,
    )
    result = model.duogpt_report
    print(
        f"pruned with {args.method} to {args.weight_sparsity:.0%} weights / {args.act_sparsity:.0%} activations "
        f"in {result.seconds:.1f} s -> {args.out}"
    )
    return 0


def _eval(args) -> int:
    from duogpt import calibrate_activation_sparsity, data, sparsify
    from duogpt.evaluate import perplexity
    from duogpt.report import check_writable, write_atomic

    if args.json:
        check_writable(args.json)
    text = data.load_text(args.text, "eval")
    model, tokenizer, meta = _load_any(args.model, device=args.device)
    if args.no_act_sparsity or args.act_sparsity is not None:
        sparsify.uninstall(model)
    if args.act_sparsity is not None:
        calib = data.load_text(args.calib, "calib")
        samples = data.calibration_samples(data.tokenize(tokenizer, calib), 16, args.seqlen, 0)
        calibrate_activation_sparsity(model, samples, args.act_sparsity, progress=not args.quiet)
    windows = data.eval_windows(data.tokenize(tokenizer, text), args.seqlen, args.max_windows)
    result = perplexity(model, windows, args.batch_size, progress=not args.quiet)
    report = {
        "model": args.model or "default",
        "text": args.text,
        "method": meta and meta["config"]["method"],
        **result.to_json(),
    }
    act = "dense" if result.activation_sparsity is None else f"{result.activation_sparsity:.3f}"
    rows = [
        ("model", report["model"]),
        (
            "perplexity",
            f"{result.perplexity:.3f}  (halves {result.half_perplexities[0]:.2f} / {result.half_perplexities[1]:.2f})",
        ),
        ("tokens", str(result.tokens)),
        ("weight sparsity", f"{result.weight_sparsity:.3f}"),
        ("activation sparsity", act),
        ("wall seconds", f"{result.wall_seconds:.1f}"),
        ("peak RSS MB", f"{result.peak_rss_mb:.0f}"),
    ]
    report["tasks"] = _zero_shot(args, model, tokenizer, text, rows)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=1))
    return 0


def _sweep(args) -> int:
    from dataclasses import replace

    from duogpt.presets import PRESETS, get_preset
    from duogpt.sweep import SweepOptions, run_sweep

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
    _, text = run_sweep(
        preset, args.out, opts, args.calib, args.text, not args.quiet, command="duogpt " + " ".join(args.argv)
    )
    print(text)
    return 0


def _zero_shot(args, model, tokenizer, text: str, rows: list) -> dict:
    """Run --tasks: the built-in ones here, the rest through lm-eval; adds a row per metric."""
    from duogpt.tasks import TASKS, run_builtin_tasks

    names = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    out = {}
    builtin = [t for t in names if t in TASKS]
    if builtin:
        for r in run_builtin_tasks(model, tokenizer, text, builtin, args.task_items, progress=not args.quiet):
            out[r.name] = r.to_json()
            rows.append((r.name, f"{r.accuracy:.3f}  (95% CI {r.ci_low:.3f}-{r.ci_high:.3f}, n={r.n})"))
    others = [t for t in names if t not in TASKS]
    if others:
        from duogpt.harness import run_lm_eval

        result = run_lm_eval(model, tokenizer, others, args.include_path, args.limit)
        for task, metrics in result["results"].items():
            out[task] = metrics
            shown = {k: v for k, v in metrics.items() if k in ("acc", "acc_norm") and isinstance(v, float)}
            rows.append((task, "  ".join(f"{k} {v:.3f}" for k, v in shown.items()) or str(metrics)))
    return out


class _TqdmHandler(logging.Handler):
    """Log lines that print above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, handlers=[handler], force=True
    )
    for noisy in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars cover the long work
    try:
        commands = {
            "prune": _prune,
            "eval": _eval,
            "report": _report,
            "generate": _generate,
            "bench": _bench,
            "sweep": _sweep,
        }
        return commands[args.command](args)
    except UsageError as err:
        print(f"duogpt {args.command}: error: {err}{_resumable_note(args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"duogpt {args.command}: interrupted; {_left_behind(args)}", file=sys.stderr)
        return 130
    except Exception as err:  # anything else is a bug or an unforeseen input: one line, unless --debug
        if args.debug:
            raise
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(
            f"duogpt {args.command}: error: {type(err).__name__}: {first}{_resumable_note(args)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _prune_state(args):
    """The resumable state an unfinished prune left, or None."""
    if args.command != "prune":
        return None
    from duogpt.resume import work_dir_for

    work = work_dir_for(args.out)
    return work if work.is_dir() else None


def _resumable_note(args) -> str:
    work = _prune_state(args)
    return f" (finished blocks are kept in {work})" if work else ""


def _left_behind(args) -> str:
    """What an interrupted command leaves: a prune's resumable state, a sweep's finished cells."""
    work = _prune_state(args)
    if work:
        return f"no checkpoint was written; finished blocks are kept in {work}: run the same command to continue"
    if args.command == "sweep" and args.out:
        return f"finished cells are kept in {args.out}/cells: run the same command to continue"
    return "nothing was written"


if __name__ == "__main__":
    sys.exit(main())
