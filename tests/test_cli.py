"""The command line end to end on a tiny checkpoint: round trip and every bad input."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import duogpt
from conftest import byte_tokenizer
from duogpt import checkpoint
from duogpt.cli import main
from duogpt.pruning import sparsify

FAST = ["--nsamples", "4", "--seqlen", "32", "--batch-size", "2", "--quiet"]


def prune_args(ckpt, text, out, *extra):
    return ["prune", str(ckpt), "--calib", str(text), "--out", str(out), *FAST, *extra]


def test_prune_save_load_eval_round_trip(tiny_checkpoint, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(prune_args(tiny_checkpoint, text_file, out, "--weight-sparsity", "0.5", "--act-sparsity", "0.5")) == 0
    meta = json.loads((out / "duogpt.json").read_text())
    assert meta["config"]["method"] == "duogpt" and len(meta["thresholds"]) == 8
    assert all(abs(r["weight_sparsity"] - 0.5) < 1e-6 for r in meta["linears"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    # exported dense, transformers loads it as an ordinary model
    assert main(["export", str(out), "--dense", str(tmp_path / "plain")]) == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert float((plain.model.layers[0].mlp.down_proj.weight == 0).float().mean()) == 0.5

    # the API reinstalls the sparsifiers
    model = duogpt.load(out)
    assert set(sparsify.registry(model)) == set(meta["thresholds"])

    report = tmp_path / "eval.json"
    capsys.readouterr()
    args = ["eval", str(out), "--text", str(text_file), "--seqlen", "32", "--max-windows", "4", "--json", str(report)]
    assert main([*args, "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "perplexity" in table and "activation sparsity" in table
    result = json.loads(report.read_text())
    for key in ("perplexity", "tokens", "weight_sparsity", "activation_sparsity", "wall_seconds", "peak_rss_mb"):
        assert key in result
    assert result["tokens"] == 4 * 31
    assert result["weight_sparsity"] == pytest.approx(0.5)
    assert 0.3 < result["activation_sparsity"] < 0.7
    cross = result["cross_domain"]  # the packaged second domain, by default, side by side
    assert cross["text"] == "pydocs" and cross["tokens"] == 4 * 31 and cross["perplexity"] != result["perplexity"]
    assert "perplexity (pydocs)" in table

    # --no-act-sparsity evaluates dense activations; a plain model evaluates dense
    dense_report = tmp_path / "dense.json"
    assert main([*args[:-2], "--json", str(dense_report), "--no-act-sparsity", "--cross-text", "none", "--quiet"]) == 0
    assert json.loads(dense_report.read_text())["activation_sparsity"] is None
    assert "cross_domain" not in json.loads(dense_report.read_text())
    plain_report = tmp_path / "plain.json"
    plain_args = ["eval", str(tiny_checkpoint), "--text", str(text_file), "--seqlen", "32", "--max-windows", "4"]
    assert main([*plain_args, "--json", str(plain_report), "--quiet"]) == 0
    plain_result = json.loads(plain_report.read_text())
    assert plain_result["weight_sparsity"] == 0.0 and plain_result["activation_sparsity"] is None

    # --act-sparsity calibrates fresh TEAL-style thresholds
    teal = tmp_path / "teal.json"
    teal_args = [*plain_args, "--calib", str(text_file), "--act-sparsity", "0.5", "--json", str(teal), "--quiet"]
    assert main(teal_args) == 0
    assert 0.4 < json.loads(teal.read_text())["activation_sparsity"] < 0.6


def test_api_prune_matches_cli_checkpoint(tiny_checkpoint, text_file, tmp_path):
    model = duogpt.prune(
        str(tiny_checkpoint),
        method="sparsegpt",
        calib=str(text_file),
        nsamples=4,
        seqlen=32,
        batch_size=2,
        out=tmp_path / "api",
        progress=False,
    )
    assert main(prune_args(tiny_checkpoint, text_file, tmp_path / "cli", "--method", "sparsegpt")) == 0
    a, b = checkpoint.read_weights(tmp_path / "api"), checkpoint.read_weights(tmp_path / "cli")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model.duogpt_report.thresholds == json.loads((tmp_path / "cli" / "duogpt.json").read_text())["thresholds"]


def unsupported_checkpoint(tmp_path):
    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


BAD = {
    "weight sparsity 1.0": (["--weight-sparsity", "1.0"], "outside [0, 1)"),
    "weight sparsity -0.1": (["--weight-sparsity", "-0.1"], "outside [0, 1)"),
    "weight sparsity text": (["--weight-sparsity", "half"], "not a number"),
    "act sparsity 1.5": (["--act-sparsity", "1.5"], "outside [0, 1)"),
    "unknown method": (["--method", "obs"], "invalid choice"),
    "unknown pattern": (["--pattern", "3:2"], "pattern '3:2'"),
    "garbled pattern": (["--pattern", "two:four"], "unknown pattern"),
    "zero samples": (["--nsamples", "0"], "positive integer"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_arguments_exit_2_and_write_nothing(case, tiny_checkpoint, text_file, tmp_path, capsys):
    extra, message = BAD[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        code = main(prune_args(tiny_checkpoint, text_file, out, *extra))
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []


def bad_runs(tiny_checkpoint, text_file, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    return {
        "missing model": (prune_args(tmp_path / "no-such-model", text_file, tmp_path / "o1"), "does not exist"),
        "short text": (prune_args(tiny_checkpoint, short, tmp_path / "o2"), "fewer than one sample"),
        "unsupported": (
            lambda: prune_args(unsupported_checkpoint(tmp_path), text_file, tmp_path / "o3"),
            "unsupported",
        ),
        "non-empty out": (prune_args(tiny_checkpoint, text_file, full), "exists and is not empty"),
        "missing text": (prune_args(tiny_checkpoint, tmp_path / "none.txt", tmp_path / "o4"), "neither a file"),
    }


@pytest.mark.parametrize("case", ["missing model", "short text", "unsupported", "non-empty out", "missing text"])
def test_bad_inputs_exit_2_with_one_line(case, tiny_checkpoint, text_file, tmp_path, capsys):
    args, message = bad_runs(tiny_checkpoint, text_file, tmp_path)[case]
    args = args() if callable(args) else args
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_eval_bad_json_destination(tiny_checkpoint, text_file, tmp_path, capsys):
    args = ["eval", str(tiny_checkpoint), "--text", str(text_file), "--json", str(tmp_path / "no" / "r.json")]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inspect_prints_and_writes_json_and_refuses_other_layouts(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "info.json"
    assert main(["inspect", str(tiny_checkpoint), "--nsamples", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sparsifier qkv" in text and "prune estimate" in text and "in memory on this machine" in text
    info = json.loads(out.read_text())
    assert info["prune"]["nsamples"] == 64 and info["blocks"] == 2 and info["prune"]["mode"] == "in memory"
    assert 0 < info["prune"]["out_of_core_memory_mb"] <= info["prune"]["estimated_memory_mb"]
    assert main(["inspect", str(unsupported_checkpoint(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "unsupported architecture GPT2LMHeadModel" in err and err.count("\n") == 1


def test_prune_keeps_the_source_dtype_unless_told(tiny_checkpoint, text_file, tmp_path):
    from safetensors import safe_open

    from conftest import tiny_model

    bf16 = tmp_path / "bf16-model"
    tiny_model().to(torch.bfloat16).save_pretrained(bf16)
    byte_tokenizer().save_pretrained(bf16)

    def dtypes(path):
        found = set()
        for f in path.glob("duogpt-*.safetensors"):
            with safe_open(str(f), "pt") as st:
                found |= {st.get_slice(k).get_dtype() for k in st.keys()}
        return found - {"U64", "I64"}  # packed bitmaps, offsets and shapes beside the values

    assert main(prune_args(bf16, text_file, tmp_path / "kept")) == 0
    assert dtypes(tmp_path / "kept") == {"BF16"}
    assert json.loads((tmp_path / "kept" / "duogpt.json").read_text())["config"]["dtype"] == "auto"
    assert main(prune_args(bf16, text_file, tmp_path / "f32", "--dtype", "float32")) == 0
    assert dtypes(tmp_path / "f32") == {"F32"}


def test_second_prune_into_the_same_out_refuses_at_start(tiny_checkpoint, text_file, tmp_path, capsys):
    from duogpt.files import run_lock

    out = tmp_path / "out"
    with run_lock(out, "prune"):  # as a first run, still going, would hold it
        assert main(prune_args(tiny_checkpoint, text_file, out)) == 2
    err = capsys.readouterr().err
    assert "being written by another duogpt prune" in err and err.count("\n") == 1
    assert not out.exists()
