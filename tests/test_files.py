"""Atomic writes: the target appears complete or not at all, and a failed write leaves nothing."""

from __future__ import annotations

import os

import pytest

from duogpt.errors import UsageError
from duogpt.files import atomic_path, check_out_dir, run_lock, write_dir, write_text


def test_write_text_replaces_with_the_usual_mode(tmp_path):
    target = tmp_path / "r.json"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "complete" and list(tmp_path.iterdir()) == [target]


def test_missing_directory_is_refused_unless_asked_to_make_it(tmp_path):
    with pytest.raises(UsageError, match="its directory does not exist"):
        write_text(tmp_path / "no" / "r.json", "x")
    write_text(tmp_path / "made" / "r.json", "x", make_parents=True)
    assert (tmp_path / "made" / "r.json").read_text() == "x"


def test_write_dir_puts_the_old_directory_back_when_filling_fails(tmp_path):
    out = tmp_path / "ckpt"
    write_dir(out, lambda d: (d / "a").write_text("1"))
    with pytest.raises(OSError):
        write_dir(out, lambda d: (_ for _ in ()).throw(OSError("no space")))
    assert (out / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    write_dir(check_out_dir(out, force=True), lambda d: (d / "b").write_text("2"))
    assert [p.name for p in out.iterdir()] == ["b"]
    with pytest.raises(UsageError, match="not empty"):
        check_out_dir(out)


HOLDER = """
import sys, time
from duogpt.files import run_lock
with run_lock(sys.argv[1], "prune"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_run_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"being written by another duogpt prune \(process {holder.pid}\)"):
            with run_lock(out, "prune"):
                pass
    finally:
        holder.kill()  # a killed run: its lock file stays, its lock does not
        holder.wait()
    assert (tmp_path / "out.duogpt-lock").exists()
    with run_lock(out, "prune"):
        assert (tmp_path / "out.duogpt-lock").read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_run_lock_removes_the_folders_it_made(tmp_path):
    with run_lock(tmp_path / "a" / "b" / "out", "sweep"):
        assert (tmp_path / "a" / "b").is_dir()
    assert list(tmp_path.iterdir()) == []
