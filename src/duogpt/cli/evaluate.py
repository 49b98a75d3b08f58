"""duogpt eval: perplexity (and zero-shot tasks) of a model or pruned checkpoint, sparsifiers active."""

from __future__ import annotations

import json

from duogpt import checks, corpus
from duogpt.api import calibrate_activation_sparsity
from duogpt.checkpoint import load_any
from duogpt.cli import options
from duogpt.evaluation.lm_eval_bridge import run_lm_eval
from duogpt.evaluation.perplexity import perplexity
from duogpt.evaluation.tasks import TASKS, run_builtin_tasks
from duogpt.files import write_text
from duogpt.pruning import sparsify


def add(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity of a model or pruned checkpoint",
        description="Perplexity of a model or pruned checkpoint, with its activation sparsifiers active.",
    )
    options.model(p, "hub id, checkpoint, or duogpt output directory", metavar="MODEL_OR_DIR")
    options.text_source(p, "--text", "evaluation text")
    options.cross_text(p)
    act = p.add_mutually_exclusive_group()
    act.add_argument(
        "--act-sparsity",
        type=checks.parse(checks.fraction),
        metavar="P",
        help="calibrate fresh thresholds for P on the calibration text (TEAL-style)",
    )
    act.add_argument("--no-act-sparsity", action="store_true", help="remove the checkpoint's sparsifiers")
    options.text_source(p, "--calib", "text for --act-sparsity thresholds")
    options.positive(p, "--seqlen", "tokens per evaluation window", default=512)
    options.bos(p, "BOS first in every window")
    options.positive(p, "--max-windows", "evaluation windows, spread over the text", default=32)
    options.positive(p, "--batch-size", "windows per forward pass", default=4)
    p.add_argument(
        "--tasks",
        metavar="LIST",
        help="comma-separated zero-shot tasks: built-in last_word, cloze (offline, over --text), "
        "or lm-eval task names such as piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa",
    )
    options.positive(p, "--task-items", "items per built-in task", default=200)
    p.add_argument("--include-path", metavar="DIR", help="lm-eval: a folder of extra task YAMLs")
    options.positive(p, "--limit", "lm-eval: at most this many examples per task")
    options.device(p)
    options.output_file(p, "--json", "also write the results as JSON")
    options.quiet(p)
    p.set_defaults(run=run)


def run(args) -> int:
    options.check_outputs(args.json)
    texts = {args.text: corpus.load_text(args.text, "eval")}
    cross = options.cross_source(args.cross_text)
    if cross and cross != args.text:
        texts[cross] = corpus.load_text(cross, "eval")
    model, tokenizer, meta = load_any(args.model, device=args.device)
    bos = corpus.bos_token(tokenizer, args.bos)
    if args.no_act_sparsity or args.act_sparsity is not None:
        sparsify.uninstall(model)
    if args.act_sparsity is not None:
        calib = corpus.load_text(args.calib, "calib")
        samples = corpus.calibration_samples(corpus.tokenize(tokenizer, calib), 16, args.seqlen, 0, bos)
        calibrate_activation_sparsity(model, samples, args.act_sparsity, progress=not args.quiet)
    results = {}
    for name, text in texts.items():
        windows = corpus.eval_windows(corpus.tokenize(tokenizer, text), args.seqlen, args.max_windows, bos)
        results[name] = perplexity(model, windows, args.batch_size, progress=not args.quiet)
    result = results[args.text]
    report = {"model": args.model or "default", "text": args.text, "method": meta and meta["config"]["method"]}
    report["bos_token_id"] = bos  # every window started with it (None: the paper protocol, no BOS)
    report.update(result.to_json())
    if len(results) > 1:
        report["cross_domain"] = dict(results[cross].to_json(), text=cross)
    if meta and meta.get("targets"):  # what each group was pruned to, beside what was measured above
        report["targets"] = meta["targets"]
        report["estimated_decode_speedup"] = meta.get("estimated_decode_speedup")
    rows = _rows(args, report["model"], results, bos)
    if report.get("estimated_decode_speedup"):
        rows.append(("est. decode speedup", f"{report['estimated_decode_speedup']:.2f}x (cost model, at the targets)"))
    report["tasks"] = _zero_shot(args, model, tokenizer, texts[args.text], rows)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        write_text(args.json, json.dumps(report, indent=1))
    return 0


def _rows(args, model: str, results: dict, bos) -> list[tuple[str, str]]:
    """The printed table: one perplexity row per text (the first the --text one), then the facts."""
    rows = [("model", model)]
    for name, r in results.items():
        halves = r.half_perplexities
        rows.append((f"perplexity ({name})", f"{r.perplexity:.3f}  (halves {halves[0]:.2f} / {halves[1]:.2f})"))
    result = results[args.text]
    act = "dense" if result.activation_sparsity is None else f"{result.activation_sparsity:.3f}"
    window = f"{args.seqlen} text tokens" if bos is None else f"BOS + {args.seqlen - 1} text tokens"
    return rows + [
        ("tokens", f"{result.tokens} scored per text ({window} per window)"),
        ("weight sparsity", f"{result.weight_sparsity:.3f}"),
        (f"activation sparsity ({args.text})", act),
        ("wall seconds", f"{sum(r.wall_seconds for r in results.values()):.1f}"),
        ("peak RSS MB", f"{max(r.peak_rss_mb for r in results.values()):.0f}"),
    ]


def _zero_shot(args, model, tokenizer, text: str, rows: list) -> dict:
    """Run --tasks: the built-in ones here, the rest through lm-eval; adds a row per metric."""
    names = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    out = {}
    builtin = [t for t in names if t in TASKS]
    if builtin:
        for r in run_builtin_tasks(model, tokenizer, text, builtin, args.task_items, progress=not args.quiet):
            out[r.name] = r.to_json()
            rows.append((r.name, f"{r.accuracy:.3f}  (95% CI {r.ci_low:.3f}-{r.ci_high:.3f}, n={r.n})"))
    others = [t for t in names if t not in TASKS]
    if others:
        result = run_lm_eval(model, tokenizer, others, args.include_path, args.limit)
        for task, metrics in result["results"].items():
            out[task] = metrics
            shown = {k: v for k, v in metrics.items() if k in ("acc", "acc_norm") and isinstance(v, float)}
            rows.append((task, "  ".join(f"{k} {v:.3f}" for k, v in shown.items()) or str(metrics)))
    return out
