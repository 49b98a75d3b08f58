"""Command line: ``duogpt inspect | prune | eval | generate | export | bench | sweep | report``.

Each subcommand lives in its own module with ``add(subparsers)`` (its options) beside
``run(args)`` (its handler); options used by several commands are in ``options``, and the
prune flags are generated from ``PruneConfig``. Errors: ``UsageError`` is one line and exit
status 2; anything unexpected is one line and exit status 1 (``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import errno
import sys

from duogpt import __version__, logs
from duogpt.cli import bench, evaluate, export, generate, inspect_model, prune, report, sweep
from duogpt.errors import UsageError
from duogpt.pruning.resume import work_dir_for

COMMANDS = (inspect_model, prune, evaluate, generate, export, bench, sweep, report)


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (with the fix: see --help), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="duogpt", description="Dual-sparse pruning (weights + activations) of Hugging Face causal LMs."
    )
    parser.add_argument("--version", action="version", version=f"duogpt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logs.configure(quiet=getattr(args, "quiet", False))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars cover the long work
    try:
        return args.run(args)
    except UsageError as err:
        print(f"duogpt {args.command}: error: {err}{_resumable_note(args)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            return _unexpected(args, err)
        where = f" writing {err.filename}" if err.filename else ""
        print(
            f"duogpt {args.command}: error: no space left on the device{where}: free space there or choose "
            f"another output{_resumable_note(args)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"duogpt {args.command}: interrupted; {_left_behind(args)}", file=sys.stderr)
        return 130
    except Exception as err:  # anything else is a bug or an unforeseen input: one line, unless --debug
        return _unexpected(args, err)


def _unexpected(args, err: Exception) -> int:
    if args.debug:
        raise err
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
