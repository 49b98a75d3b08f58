"""Out-of-core prunes: one block in memory at a time, the same checkpoint as the in-memory prune."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import duogpt
from conftest import byte_tokenizer, tiny_llama_config, tiny_model
from duogpt.errors import UsageError
from duogpt.pruning import pipeline

SETTINGS = dict(nsamples=4, seqlen=32, batch_size=2, progress=False)


def sharded_checkpoint(path, shard="200KB", **config):
    model = tiny_model(tiny_llama_config(num_hidden_layers=4, **config))
    model.save_pretrained(path, max_shard_size=shard)
    byte_tokenizer().save_pretrained(path)
    assert len(list(path.glob("model-*.safetensors"))) >= 3
    return path


def same_checkpoint(a, b) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name != "duogpt.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "duogpt.json").read_text()) for d in (a, b))
    assert ma["thresholds"] == mb["thresholds"] and ma["config"] == mb["config"]
    keys = ("name", "weight_sparsity", "rel_error", "alpha", "ridge")
    assert [[r[k] for k in keys] for r in ma["linears"]] == [[r[k] for k in keys] for r in mb["linears"]]


@pytest.mark.parametrize("method", ["duogpt", "sparsegpt", "wanda"])
def test_offload_writes_the_in_memory_checkpoint_bit_for_bit(method, tmp_path, text_file):
    src = sharded_checkpoint(tmp_path / "src")
    common = dict(method=method, calib=str(text_file), **SETTINGS)
    duogpt.prune(str(src), out=tmp_path / "mem", offload=False, **common)
    model = duogpt.prune(str(src), out=tmp_path / "ooc", offload=True, **common)
    same_checkpoint(tmp_path / "mem", tmp_path / "ooc")
    meta = json.loads((tmp_path / "ooc" / "duogpt.json").read_text())
    assert meta["resources"]["offload"] is True and model.duogpt_report is not None
    assert all(p.is_meta for p in model.model.layers.parameters())  # no block stayed in memory


def test_offload_refuses_alpha_auto_before_writing_anything(tmp_path, text_file):
    src = sharded_checkpoint(tmp_path / "src")
    with pytest.raises(UsageError, match="--alpha auto .* every block in memory: drop --offload"):
        duogpt.prune(str(src), out=tmp_path / "out", offload=True, alpha="auto", calib=str(text_file), **SETTINGS)
    assert not (tmp_path / "out").exists()


def test_offload_holds_no_weights_outside_the_block_while_pruning(tmp_path, text_file, monkeypatch):
    src = sharded_checkpoint(tmp_path / "src", tie_word_embeddings=False)
    seen = []
    real = pipeline._prune_block

    def spy(model, block, *args):
        seen.append([n for n, p in model.named_parameters() if not p.is_meta and ".layers." not in n])
        return real(model, block, *args)

    monkeypatch.setattr(pipeline, "_prune_block", spy)
    duogpt.prune(str(src), out=tmp_path / "ooc", offload=True, calib=str(text_file), **SETTINGS)
    assert len(seen) == 4 and not any(seen)  # embeddings, norm and head are read again only for the writer
    duogpt.prune(str(src), out=tmp_path / "mem", offload=False, calib=str(text_file), **SETTINGS)
    same_checkpoint(tmp_path / "mem", tmp_path / "ooc")


def test_offload_crash_then_resume_is_bit_identical(tmp_path, text_file, monkeypatch):
    src = sharded_checkpoint(tmp_path / "src")
    common = dict(calib=str(text_file), **SETTINGS)
    duogpt.prune(str(src), out=tmp_path / "straight", offload=True, **common)
    real = pipeline._solve_group

    def crash(block, group, *args):
        if block.index == 2 and group == "gate_up":
            raise RuntimeError("simulated crash")
        return real(block, group, *args)

    monkeypatch.setattr(pipeline, "_solve_group", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        duogpt.prune(str(src), out=tmp_path / "resumed", offload=True, **common)
    assert not (tmp_path / "resumed").exists() and not list(tmp_path.glob(".resumed.tmp-*"))
    monkeypatch.setattr(pipeline, "_solve_group", real)
    duogpt.prune(str(src), out=tmp_path / "resumed", offload=True, **common)
    same_checkpoint(tmp_path / "straight", tmp_path / "resumed")
    meta = json.loads((tmp_path / "resumed" / "duogpt.json").read_text())
    assert [b["block"] for b in meta["block_seconds"]] == [0, 1, 2, 3]  # the first run's blocks kept their times
    assert meta["resources"]["peak_rss_mb"] >= meta["resources"]["peak_rss_mb_before_resume"] > 0
    assert meta["resources"]["resume_seconds"] >= 0  # reading the finished blocks back is counted apart
    for record in meta["block_seconds"]:  # every block has its total, also the one saved last before the crash
        phases = sum(record.get(p, 0.0) for p in ("forward", "statistics", "solve", "io"))
        assert record["total"] >= phases * 0.99


def test_offload_refuses_missing_or_truncated_shards(tmp_path, text_file):
    src = sharded_checkpoint(tmp_path / "src")
    shards = sorted(src.glob("model-*.safetensors"))
    shards[1].write_bytes(shards[1].read_bytes()[:50])
    with pytest.raises(UsageError, match="truncated or damaged"):
        duogpt.prune(str(src), out=tmp_path / "o1", offload=True, calib=str(text_file), **SETTINGS)
    shards[1].unlink()
    with pytest.raises(UsageError, match="missing"):
        duogpt.prune(str(src), out=tmp_path / "o2", offload=True, calib=str(text_file), **SETTINGS)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    with pytest.raises(UsageError, match="give --out"):
        duogpt.prune(str(src), offload=True, calib=str(text_file), **SETTINGS)


PEAK = """
import json, sys
import duogpt
duogpt.prune(sys.argv[1], out=sys.argv[2], offload=sys.argv[3] == "1", calib=sys.argv[4], nsamples=2, seqlen=16,
             method="sparsegpt", progress=False)
print(json.dumps(json.load(open(sys.argv[2] + "/duogpt.json"))["resources"]))
"""


@pytest.mark.slow
@pytest.mark.ci_slow
def test_offload_peak_memory_is_well_below_the_in_memory_one(tmp_path, text_file):
    src = tmp_path / "src"
    config = tiny_llama_config(num_hidden_layers=12, hidden_size=1024, intermediate_size=2816, num_attention_heads=8)
    tiny_model(config).save_pretrained(src, max_shard_size="100MB")
    byte_tokenizer().save_pretrained(src)
    model_mb = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2**20
    peaks = {}
    for flag in ("0", "1"):
        out = tmp_path / f"out{flag}"
        run = [sys.executable, "-c", PEAK, str(src), str(out), flag, str(text_file)]
        resources = json.loads(subprocess.run(run, capture_output=True, text=True, check=True).stdout)
        peaks[flag] = resources["peak_rss_mb"]
        assert resources["estimated_memory_mb"] >= peaks[flag], resources  # the estimate is an upper bound
    # measured: 1098 vs 1351 MB for a 517 MB model (the in-memory prune no longer holds copies of
    # every group's inputs through the solve, so its peak is closer to model + working set)
    assert peaks["1"] < peaks["0"] - 0.35 * model_mb, (peaks, model_mb)
    assert torch.equal(
        torch.tensor(list((tmp_path / "out0" / "duogpt-00001.safetensors").read_bytes()[:4096])),
        torch.tensor(list((tmp_path / "out1" / "duogpt-00001.safetensors").read_bytes()[:4096])),
    )


def test_a_full_disk_is_one_line_and_leaves_nothing_at_out(tmp_path, text_file, monkeypatch, capsys):
    import errno

    from duogpt import shards
    from duogpt.cli import main
    from duogpt.pruning.resume import work_dir_for

    src = sharded_checkpoint(tmp_path / "src")
    capsys.readouterr()
    real, calls = shards.save_file, []

    def fills_up(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second block's shard: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(shards, "save_file", fills_up)
    capsys.readouterr()  # the source model's own saving
    out = tmp_path / "out"
    args = ["prune", str(src), "--offload", "--calib", str(text_file), "--nsamples", "4", "--seqlen", "32"]
    assert main([*args, "--batch-size", "2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device writing" in err and "finished blocks are kept" in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written at --out
    assert work_dir_for(out).is_dir()  # the run can continue once there is room
