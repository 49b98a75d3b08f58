"""The sparse runtime: same model as the dense runtime, packed files, generate and bench."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from duogpt import checkpoint
from duogpt.cli import main
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.pruning import sparsify
from duogpt.pruning.pipeline import prune_model
from duogpt.runtime import bench
from duogpt.runtime.generate import generate, greedy
from duogpt.runtime.linear import DualSparseLinear, load_packed, to_sparse_runtime, use_kernels


def pruned_tiny(samples, dtype=torch.float32):
    model = tiny_model().to(dtype)
    cfg = PruneConfig(method="duogpt", nsamples=8, seqlen=32, batch_size=4, blocksize=16)
    result = prune_model(model, samples, cfg, progress=False)
    model.duogpt_report = result
    return model, result.thresholds


def save_pruned(model, out):
    """The model as a pruned checkpoint (weights, packed shards, duogpt.json); returns its sparse_format."""
    checkpoint.save(model, None, model.duogpt_report, out, base_model="tiny")
    return checkpoint.read_meta(out)["sparse_format"]


def test_sparse_runtime_computes_the_same_model(samples):
    model, thresholds = pruned_tiny(samples)
    sparsify.uninstall(model)
    to_sparse_runtime(model)
    sparsify.install(model, thresholds)
    assert sum(isinstance(m, DualSparseLinear) for m in model.modules()) == 14
    prompt = samples[:1, :8]
    use_kernels(model, False)
    dense_tokens, _, _ = greedy(model, prompt, 16)
    use_kernels(model, True)
    sparse_tokens, _, _ = greedy(model, prompt, 16)
    assert dense_tokens == sparse_tokens
    with torch.no_grad():  # a decode-sized input goes through the kernel and matches
        lin = model.model.layers[0].mlp.down_proj
        x = torch.randn(1, 1, lin.in_features)
        xs = sparsify.sparsify(x, thresholds["layers.0.down"])  # the sparsifier hook runs first
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(xs, lin.weight), rtol=1e-5, atol=1e-5)


def test_packed_file_round_trip_and_size(samples, tmp_path):
    model, _ = pruned_tiny(samples, torch.bfloat16)
    info = save_pruned(model, tmp_path / "ckpt")
    packed = load_packed(tmp_path / "ckpt")
    assert len(packed) == 14
    assert info["bytes"] < 0.75 * info["dense_bytes"]  # 50% weights: half the values plus a 1/16 bitmap
    from duogpt.runtime.format import unpack

    w = model.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(unpack(packed["layers.1.self_attn.q_proj"]), w)


def test_damaged_packed_file_is_refused(samples, tmp_path):
    model, _ = pruned_tiny(samples)
    save_pruned(model, tmp_path / "ckpt")
    path = next((tmp_path / "ckpt").glob("duogpt-sparse-*.safetensors"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UsageError, match="truncated or damaged"):
        load_packed(tmp_path / "ckpt")


def test_packed_shape_mismatch_is_refused(samples, tmp_path):
    model, _ = pruned_tiny(samples)
    save_pruned(model, tmp_path / "ckpt")
    packed = load_packed(tmp_path / "ckpt")
    packed["layers.0.mlp.down_proj"] = packed["layers.0.mlp.up_proj"]
    with pytest.raises(UsageError, match="has shape"):
        to_sparse_runtime(tiny_model(), packed)


def test_cli_generate_both_runtimes_same_text(tiny_checkpoint, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", str(tiny_checkpoint), "--calib", str(text_file), "--nsamples", "4", "--seqlen", "32"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    texts = {}
    for runtime in ("dense", "sparse"):
        capsys.readouterr()
        assert main(["generate", str(out), "--prompt", "The jury", "--max-new-tokens", "12", "--runtime", runtime]) == 0
        captured = capsys.readouterr()
        texts[runtime] = captured.out
        assert "tokens/s" in captured.err and f"{runtime} runtime" in captured.err
    assert texts["dense"] == texts["sparse"]
    model, tokenizer, meta = checkpoint.load(out, runtime="sparse")
    assert meta["sparse_format"]["bytes"] < meta["sparse_format"]["dense_bytes"]
    assert generate(model, tokenizer, "The jury", 4).decode_tokens_per_second > 0


def test_bench_gemv_records():
    result = bench.gemv(
        shapes=[(130, 70)],
        dtypes=(torch.float32,),
        sparsities=[(0.0, 0.0), (0.5, 0.5)],
        repeats=5,
        tile_rows=64,
        evict_mb=1,
        progress=lambda _: None,
    )
    assert result["bandwidth_gbps"] > 0
    for rec in result["records"]:
        for key in ("shape", "dtype", "p_w", "p_x", "dense_ms", "sparse_ms", "speedup", "sparse_gbps"):
            assert key in rec
        assert rec["max_abs_error"] < 1e-3
    assert "of bandwidth" in bench.gemv_markdown(result)


def test_bench_decode_on_a_small_random_stack():
    result = bench.decode(
        None,
        layers=1,
        dtype=torch.float32,
        new_tokens=4,
        rounds=1,
        progress=lambda _: None,
        hidden=64,
        ffn=128,
        heads=4,
        vocab=256,
    )
    (rec,) = result["records"]
    assert rec["dense_tok_s"] > 0 and rec["sparse_tok_s"] > 0 and rec["same_greedy_tokens"]
    assert "tok/s" in bench.decode_markdown(result)
