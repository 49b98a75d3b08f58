"""Resumable prunes: a prune killed mid-block and resumed equals an uninterrupted one, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import tiny_llama_config, tiny_model
from duogpt import checkpoint
from duogpt.cli import main
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.pruning import pipeline, resume
from duogpt.pruning.pipeline import prune_model
from duogpt.pruning.resume import work_dir_for


def _cfg(**kw) -> PruneConfig:
    return PruneConfig(**{"method": "duogpt", "weight_sparsity": 0.5, "act_sparsity": 0.5, "nsamples": 4, **kw})


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _crash_at(monkeypatch, block_index: int, group: str) -> None:
    real = pipeline._solve_group

    def solve(block, g, *args):
        if block.index == block_index and g == group:
            raise RuntimeError("simulated crash")
        return real(block, g, *args)

    monkeypatch.setattr(pipeline, "_solve_group", solve)


@pytest.mark.parametrize("method", ["duogpt", "sparsegpt", "wanda"])
def test_crash_mid_block_then_resume_is_bit_identical(method, tmp_path, monkeypatch):
    config = tiny_llama_config(num_hidden_layers=4)
    samples = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    reference = tiny_model(config)
    expected = prune_model(reference, samples, _cfg(method=method), progress=False)

    work = tmp_path / "work"
    crashed = tiny_model(config)
    with monkeypatch.context() as m:
        _crash_at(m, 2, "gate_up")
        with pytest.raises(RuntimeError, match="simulated crash"):
            prune_model(crashed, samples, _cfg(method=method), progress=False, work_dir=work)
    names = sorted(p.name for p in work.iterdir())
    assert names == ["block-0.safetensors", "block-1.safetensors", "state.json", "streams.safetensors"]

    resumed = tiny_model(config)  # a fresh process would load the dense model again
    result = prune_model(resumed, samples, _cfg(method=method), progress=False, work_dir=work)
    assert result.thresholds == expected.thresholds
    got, want = _weights(resumed), _weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [r.name for r in result.linears] == [r.name for r in expected.linears]


def test_state_from_another_run_is_refused(tmp_path, monkeypatch):
    config = tiny_llama_config(num_hidden_layers=3)
    samples = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    with monkeypatch.context() as m:
        _crash_at(m, 1, "qkv")
        with pytest.raises(RuntimeError):
            prune_model(tiny_model(config), samples, _cfg(), progress=False, work_dir=tmp_path / "w")
    with pytest.raises(UsageError, match="belongs to a different run"):
        prune_model(tiny_model(config), samples, _cfg(weight_sparsity=0.3), progress=False, work_dir=tmp_path / "w")
    (tmp_path / "w" / "streams.safetensors").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="unreadable"):
        prune_model(tiny_model(config), samples, _cfg(), progress=False, work_dir=tmp_path / "w")


def test_determinism_same_run_twice_is_bit_identical():
    config = tiny_llama_config(num_hidden_layers=3)
    samples = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        model = tiny_model(config)
        result = prune_model(model, samples, _cfg(), progress=False)
        runs.append((_weights(model), result.thresholds))
    (w1, t1), (w2, t2) = runs
    assert t1 == t2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from duogpt.pruning import pipeline, resume
    from duogpt.cli import main
    real = pipeline._solve_group
    def solve(block, group, *args):
        if block.index == 2 and group == "o":
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of block 2
        return real(block, group, *args)
    pipeline._solve_group = solve
    sys.exit(main(sys.argv[1:]))
    """
)


def test_kill_9_then_same_command_resumes_bit_identical(tmp_path):
    from conftest import byte_tokenizer

    ckpt = tmp_path / "model"
    tiny_model(tiny_llama_config(num_hidden_layers=4)).save_pretrained(ckpt)
    byte_tokenizer().save_pretrained(ckpt)
    text = tmp_path / "text.txt"
    text.write_text("The jury said the election was conducted well and fairly. " * 60)
    common = [str(ckpt), "--calib", str(text), "--nsamples", "4", "--seqlen", "32", "--quiet"]
    assert main(["prune", *common, "--out", str(tmp_path / "straight")]) == 0

    out = tmp_path / "resumed"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, "-c", KILLER, "prune", *common, "--out", str(out)], env=env)
    assert proc.returncode == -9
    assert not out.exists() and (work_dir_for(out) / "state.json").is_file()
    assert not list(tmp_path.glob(".resumed.tmp-*"))  # no half-written checkpoint
    assert main(["prune", *common, "--out", str(out)]) == 0
    assert not work_dir_for(out).exists()  # cleared once the checkpoint is complete

    a, b = checkpoint.read_weights(tmp_path / "straight"), checkpoint.read_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta_a = json.loads((tmp_path / "straight" / "duogpt.json").read_text())
    meta_b = json.loads((out / "duogpt.json").read_text())
    assert meta_a["thresholds"] == meta_b["thresholds"]


def test_interrupted_prune_says_where_its_state_is(tmp_path, monkeypatch, capsys, tiny_checkpoint, text_file):
    real = pipeline._solve_group

    def interrupt(block, group, *args):
        if block.index == 1:
            raise KeyboardInterrupt
        return real(block, group, *args)

    monkeypatch.setattr(pipeline, "_solve_group", interrupt)
    out = tmp_path / "out"
    args = ["prune", str(tiny_checkpoint), "--calib", str(text_file), "--nsamples", "2", "--seqlen", "16"]
    assert main([*args, "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert f"finished blocks are kept in {work_dir_for(out)}" in err and not out.exists()
    monkeypatch.setattr(pipeline, "_solve_group", real)
    assert main([*args, "--out", str(out), "--quiet", "--no-resume"]) == 0
    assert main([*args, "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--quiet", "--force"]) == 0


def test_large_streams_are_checkpointed_only_when_due_and_resume_redoes_the_rest(tmp_path, monkeypatch):
    """Past SMALL_STATE the streams are written only when the blocks since took 10x the write; same result."""
    config = tiny_llama_config(num_hidden_layers=4)
    samples = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    reference = tiny_model(config)
    expected = prune_model(reference, samples, _cfg(), progress=False)
    monkeypatch.setattr(resume, "SMALL_STATE", 0)
    real_save = resume.WorkDir.save

    def slow_to_write(self, *args):
        real_save(self, *args)
        self.write_seconds = 1e9  # as if writing the streams took far longer than any block

    work = tmp_path / "work"
    with monkeypatch.context() as m:
        m.setattr(resume.WorkDir, "save", slow_to_write)
        _crash_at(m, 3, "o")
        with pytest.raises(RuntimeError, match="simulated crash"):
            prune_model(tiny_model(config), samples, _cfg(), progress=False, work_dir=work)
    assert json.loads((work / "state.json").read_text())["next_block"] == 1  # blocks 1 and 2 not checkpointed
    resumed = tiny_model(config)
    result = prune_model(resumed, samples, _cfg(), progress=False, work_dir=work)
    assert result.thresholds == expected.thresholds
    got, want = _weights(resumed), _weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert result.resources["work_state_mb"] > 0
