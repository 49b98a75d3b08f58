"""Resource estimates: they scale with the run, and a run that will not fit is refused with advice."""

from __future__ import annotations

import json

import pytest

from duogpt.cli import main
from duogpt.errors import UsageError
from duogpt.pruning import preflight


def test_estimate_grows_with_tokens_and_streams(tiny_llama):
    small = preflight.estimate(tiny_llama, 4, 32, 1, with_work_dir=False)
    more = preflight.estimate(tiny_llama, 8, 32, 1, with_work_dir=False)
    two = preflight.estimate(tiny_llama, 4, 32, 2, with_work_dir=True)
    assert more.memory > small.memory and more.streams == 2 * small.streams
    assert two.streams == 2 * small.streams and two.disk > small.disk


def test_too_little_memory_or_disk_is_refused_with_advice(tiny_llama, monkeypatch, tmp_path):
    est = preflight.estimate(tiny_llama, 4, 32, 2, with_work_dir=True)
    monkeypatch.setattr(preflight, "available_memory", lambda: est.memory // 2)
    with pytest.raises(UsageError, match="use fewer --nsamples or a shorter --seqlen"):
        preflight.check(est, tmp_path / "out")
    monkeypatch.setattr(preflight, "available_memory", lambda: est.memory * 2)
    monkeypatch.setattr(preflight, "available_disk", lambda _p: est.disk // 2)
    with pytest.raises(UsageError, match="free some space or choose another --out"):
        preflight.check(est, tmp_path / "out")


def test_prune_records_estimates_and_peaks(tiny_checkpoint, text_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["prune", str(tiny_checkpoint), "--calib", str(text_file), "--nsamples", "2", "--seqlen", "16", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    meta = json.loads((out / "duogpt.json").read_text())
    res = meta["resources"]
    assert res["peak_rss_mb"] > 0 and res["estimated_memory_mb"] > 0 and meta["checkpoint_mb"] > 0
    assert res["estimated_disk_mb"] >= meta["checkpoint_mb"]
    monkeypatch.setattr(preflight, "available_memory", lambda: 1)
    assert main([*args, "--out", str(tmp_path / "other")]) == 2
    assert "GB of memory" in capsys.readouterr().err and not (tmp_path / "other").exists()
