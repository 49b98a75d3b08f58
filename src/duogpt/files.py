"""Every write that must never be seen half-done goes through here, and so does the cache folder.

- :func:`atomic_path`: a temporary path beside the target, renamed over it only on success.
  Writers that take a path (safetensors, ``torch.save``, matplotlib, a compiler) write there.
- :func:`write_text`: the same for a string.
- :func:`staged_dir` / :func:`write_dir`: a whole directory, filled under a temporary name and renamed
  into place.
- :func:`check_writable` and :func:`check_out_dir`: refuse a destination before any long work.
- :func:`run_lock`: one run at a time per output (a lock held for the run's life, released on any
  exit, also a kill, since the kernel drops it with the process).
- :func:`cache_dir`: ``$DUOGPT_CACHE`` (default ``~/.cache/duogpt``): converted models, built kernels.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from duogpt.errors import UsageError


def cache_dir() -> Path:
    return Path(os.environ.get("DUOGPT_CACHE", Path.home() / ".cache" / "duogpt"))


def check_writable(path: str | Path) -> Path:
    """Refuse an output file whose directory does not exist (checked before any long work)."""
    target = Path(path)
    if not target.resolve().parent.is_dir():
        raise UsageError(f"{str(target)!r}: its directory does not exist: create it first")
    return target


def check_out_dir(out: str | Path, force: bool = False) -> Path:
    """Refuse an existing non-empty output directory (unless ``force``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory: choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(
            f"--out {str(out)!r} exists and is not empty: choose a new directory, or pass --force to replace it"
        )
    return out


def _usual_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it goes.

    The file gets the usual mode (``mkstemp`` would leave 0600).
    """
    target = Path(path)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        check_writable(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.resolve().parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _usual_mode())
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | Path, text: str, make_parents: bool = False) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path, make_parents) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to fill; on success it is renamed into place.

    An existing ``out`` (the caller has checked it may go) is moved aside first and put back
    if the rename fails; a failure leaves no temporary directory behind.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = None
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / "previous")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "previous").exists() and not out.exists():
            (old / "previous").rename(out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_dir(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """``fill(tmp)`` a staged directory (see :func:`staged_dir`) that then replaces ``out``."""
    with staged_dir(out) as tmp:
        fill(tmp)
    return Path(out)


def remove_stale_stages(out: str | Path) -> None:
    """Delete temporary siblings of ``out`` left by a killed run (call while holding its run lock)."""
    out = Path(out)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


LOCK_SUFFIX = ".duogpt-lock"


def _try_lock(lock: Path) -> int | None:
    """An fd holding an exclusive lock on ``lock`` (created if need be), or None if another process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder finished and removed the file between our open and lock: try again


@contextlib.contextmanager
def run_lock(target: str | Path, command: str) -> Iterator[None]:
    """Refuse to start while another duogpt run writes ``target``; hold the lock until this run ends.

    The lock is ``flock`` on ``<target>.duogpt-lock``: a run that is killed loses it with its
    process, so a lock file left by a dead run is taken over, not mistaken for a live one.
    """
    target = Path(target)
    lock = target.with_name(target.name + LOCK_SUFFIX)
    made = [d for d in reversed(lock.parents) if not d.exists()]  # folders this run creates for it
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(lock)
    if fd is None:
        holder = lock.read_text().strip() or "?"
        raise UsageError(
            f"{str(target)!r} is being written by another duogpt {command} (process {holder}): "
            "wait for it to finish, or choose another output"
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        for folder in reversed(made):  # a run that wrote nothing leaves no empty folders either
            with contextlib.suppress(OSError):
                folder.rmdir()
