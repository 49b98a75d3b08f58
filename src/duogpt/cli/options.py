"""Options shared by several subcommands, defined once, and the prune flags generated from PruneConfig."""

from __future__ import annotations

import argparse

from duogpt import checks
from duogpt.config import PruneConfig, fields
from duogpt.corpus import BOS_MODES, CROSS_SOURCE, DEFAULT_SOURCE, SOURCES
from duogpt.files import check_writable


def model(p: argparse.ArgumentParser, what: str = "hub id or local checkpoint", metavar: str = "MODEL") -> None:
    p.add_argument("model", nargs="?", default=None, metavar=metavar, help=f"{what} (default: the embedded model)")


def quiet(p: argparse.ArgumentParser, what: str = "no progress bars") -> None:
    p.add_argument("--quiet", action="store_true", help=what)


def device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")


def text_source(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    p.add_argument(flag, default=DEFAULT_SOURCE, metavar="SOURCE", help=f"{what}: {SOURCES} (default: %(default)s)")


def cross_text(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cross-text",
        default=CROSS_SOURCE,
        metavar="SOURCE",
        help="a second evaluation text of another domain, reported beside the first: "
        f"{SOURCES}, or none (default: %(default)s, the Python standard library's documentation)",
    )


def cross_source(value: str | None) -> str | None:
    """The --cross-text value as a source, or None for 'none'."""
    return None if value is None or value.lower() == "none" else value


def bos(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--bos",
        choices=BOS_MODES,
        default="auto",
        help=f"{what}: auto (when the tokenizer adds one), always, or never (the SparseGPT/Wanda-paper "
        "protocol: one tokenised text cut into windows) (default: %(default)s)",
    )


def output_file(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    p.add_argument(flag, metavar="PATH", help=what)


def check_outputs(*paths: str | None) -> None:
    """Refuse, before any work, output files (those given) whose directory does not exist."""
    for path in paths:
        if path:
            check_writable(path)


def positive(p: argparse.ArgumentParser, flag: str, what: str, default=None) -> None:
    shown = " (default: %(default)s)" if default is not None else ""
    p.add_argument(flag, type=checks.parse(checks.positive_int), default=default, metavar="N", help=what + shown)


def prune_settings(p: argparse.ArgumentParser) -> None:
    """One flag per PruneConfig field, named after it, with its help, check, choices and default."""
    group = p.add_argument_group("prune settings (PruneConfig fields)")
    for f in fields():
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        help_text = meta["help"] + " (default: %(default)s)"
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            for alias in meta["negation_aliases"]:
                group.add_argument(alias, dest=f.name, action="store_false", help=f"the same as --no-{flag[2:]}")
            continue
        kwargs = {"choices": meta["choices"]} if meta["choices"] else {"type": checks.parse(meta["check"])}
        group.add_argument(flag, default=f.default, metavar=meta["metavar"], help=help_text, **kwargs)


def prune_config(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(**{f.name: getattr(args, f.name) for f in fields()}).validate()
