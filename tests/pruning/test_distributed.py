"""Several processes (torchrun, gloo): the same prune as one process, split over the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import byte_tokenizer, tiny_llama_config, tiny_model
from duogpt import checkpoint

DUOGPT = str(Path(sys.executable).parent / "duogpt")


def _prune(nproc: int, src, text, out, *extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same threads per process in both runs
    args = ["prune", str(src), "--calib", str(text), "--out", str(out), "--nsamples", "4", "--seqlen", "32"]
    args += ["--batch-size", "1", "--quiet", *extra]
    if nproc == 1:
        return subprocess.run([DUOGPT, *args], env=env, capture_output=True, text=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--no-python"]
    return subprocess.run([*launcher, DUOGPT, *args], env=env, capture_output=True, text=True)


def _weights(path) -> dict[str, torch.Tensor]:
    return checkpoint.read_weights(path)


@pytest.mark.parametrize("method", ["duogpt", "wanda", "duogpt --alpha auto"])
def test_two_processes_equal_one(method, tmp_path, text_file):
    src = tmp_path / "src"
    tiny_model(tiny_llama_config(num_hidden_layers=3)).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    one = _prune(1, src, text_file, tmp_path / "one", "--method", *method.split())
    two = _prune(2, src, text_file, tmp_path / "two", "--method", *method.split())
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("pruned with") == 1  # only rank 0 reports
    meta1, meta2 = (json.loads((tmp_path / d / "duogpt.json").read_text()) for d in ("one", "two"))
    assert meta1["thresholds"] == meta2["thresholds"]
    chosen = [(r["alpha"], r["ridge"]) for r in meta1["linears"]]  # --alpha auto: the same per-linear choice
    assert chosen == [(r["alpha"], r["ridge"]) for r in meta2["linears"]]
    assert meta2["resources"]["world_size"] == 2 and meta1["resources"]["world_size"] == 1
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in a:
        assert torch.equal(a[name] == 0, b[name] == 0), name  # identical masks
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


def test_a_failing_rank_stops_the_run_with_one_line(tmp_path, text_file):
    src = tmp_path / "src"
    tiny_model(tiny_llama_config(num_hidden_layers=2)).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    run = _prune(2, src, text_file, tmp_path / "out", "--nsamples", "1")  # 1 batch for 2 processes
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("duogpt prune: error:")]
    assert lines and "for 2 processes" in lines[0]
    assert not (tmp_path / "out").exists()


KILL_RANK0_IN_BLOCK_2 = """
import os, signal, sys
import torch.distributed as dist
from duogpt.cli import main
from duogpt.pruning import pipeline
real = pipeline._solve_group
def solve(block, group, *args):
    if block.index == 2 and group == "o" and dist.get_rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(block, group, *args)
pipeline._solve_group = solve
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_of_a_rank_then_the_same_command_resumes_identically(tmp_path, text_file):
    src = tmp_path / "src"
    tiny_model(tiny_llama_config(num_hidden_layers=4)).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    assert _prune(2, src, text_file, tmp_path / "straight").returncode == 0
    killer = tmp_path / "killer.py"
    killer.write_text(KILL_RANK0_IN_BLOCK_2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["prune", str(src), "--calib", str(text_file), "--out", str(tmp_path / "resumed"), "--nsamples", "4"]
    args += ["--seqlen", "32", "--batch-size", "1", "--quiet"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    killed = subprocess.run([*launcher, str(killer), *args], env=env, capture_output=True, text=True)
    assert killed.returncode != 0 and not (tmp_path / "resumed").exists()
    work = tmp_path / "resumed.duogpt-work"
    assert {"streams-rank0.safetensors", "streams-rank1.safetensors", "state.json"} <= {p.name for p in work.iterdir()}
    assert _prune(2, src, text_file, tmp_path / "resumed").returncode == 0
    assert not work.exists()
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    thresholds = [json.loads((tmp_path / d / "duogpt.json").read_text())["thresholds"] for d in ("straight", "resumed")]
    assert thresholds[0] == thresholds[1]
