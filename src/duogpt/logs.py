"""The ``duogpt`` logger: lines that print above progress bars, and a way to quiet it for a while."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm

log = logging.getLogger("duogpt")


@contextlib.contextmanager
def muted(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the logger's level (e.g. to hide per-linear lines under a grid's bar); restored on any exit."""
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


class TqdmHandler(logging.Handler):
    """Log lines that print above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def configure(quiet: bool) -> None:
    """The command line's logging: duogpt's lines (warnings only when quiet), others' errors only."""
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler], force=True)
    for noisy in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
