"""duogpt prune: prune a model to dual sparsity and save a checkpoint."""

from __future__ import annotations

import argparse
import logging

import torch.distributed as dist

from duogpt import logs
from duogpt.api import prune
from duogpt.cli import options
from duogpt.pruning import distributed


def add(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model to dual sparsity and save it",
        description="Prune a model to dual sparsity (weights + activations) and save a checkpoint.",
    )
    options.model(p)
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output checkpoint directory (must not exist or be empty)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prune out of core: one block in memory at a time, read from the checkpoint's shards and written "
        "to --out as it finishes (default: chosen when the in-memory prune would not fit)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if an interrupted run left its state in OUT.duogpt-work",
    )
    options.device(p)
    options.quiet(p, "no progress bars or per-linear log lines")
    options.prune_settings(p)
    p.set_defaults(run=run)


def run(args) -> int:
    """One prune; under torchrun every process runs this, rank 0 logs, prints and writes."""
    cfg = options.prune_config(args)
    joined = distributed.init_from_env(args.device)
    try:
        return _run(args, cfg)
    finally:
        if joined:
            dist.destroy_process_group()


def _run(args, cfg) -> int:
    lead = distributed.world()[0] == 0
    if not lead:
        logs.log.setLevel(logging.WARNING)
    model = prune(
        args.model, cfg, out=args.out, device=args.device, progress=not args.quiet and lead, force=args.force,
        resume=not args.no_resume, offload=args.offload,
    )  # fmt: skip
    if lead:
        report = model.duogpt_report
        to = f"{cfg.weight_sparsity:.0%} weights / {cfg.act_sparsity:.0%} activations"
        if cfg.targets_from_cost:
            to = (
                f"per-layer targets ({cfg.allocation}), estimated decode speedup {report.estimated_decode_speedup:.2f}x"
            )
        print(f"pruned with {cfg.method} to {to} in {report.seconds:.1f} s -> {args.out}")
    return 0
