"""The compact checkpoint: what is on disk, how it loads, older layouts, exports and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, pipeline

from conftest import byte_tokenizer, tiny_llama_config, tiny_model
from duogpt import checkpoint
from duogpt.cli import main
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.pruning import sparsify
from duogpt.pruning.pipeline import prune_model
from duogpt.runtime.kernels import triton_spmspv
from duogpt.runtime.linear import GPU_PATH_ENV, PACKED_PREFIX, DualSparseLinear, linears_by_name, packed_form
from duogpt.shards import ShardWriter


def pruned(samples, dtype=torch.float32, **settings):
    model = tiny_model().to(dtype)
    cfg = PruneConfig(nsamples=8, seqlen=32, batch_size=4, blocksize=16, **settings)
    model.duogpt_report = prune_model(model, samples, cfg, progress=False)
    return model


def save(model, out, layout="compact"):
    run = {"base_model": "tiny", **model.duogpt_report.to_json()}
    checkpoint.save(model, byte_tokenizer(), run, out, layout=layout)
    return checkpoint.read_meta(out)


def masked_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compact_layout_on_disk(samples, tmp_path, dtype):
    model = pruned(samples, dtype)
    meta = save(model, tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert "duogpt.safetensors.index.json" in names and not [n for n in names if n.startswith("model")]
    assert len([n for n in names if n.startswith("duogpt-0")]) == 3  # one shard per block, one for the rest
    assert meta["format_version"] == checkpoint.FORMAT_VERSION and meta["layout"] == "compact"
    with safe_open(str(tmp_path / "c" / "duogpt-00001.safetensors"), "pt") as f:
        assert f.metadata() == {"duogpt_format_version": str(checkpoint.FORMAT_VERSION)}
        assert "model.layers.0.mlp.down_proj.weight" not in f.keys()  # packed only
        assert f.get_tensor("model.layers.0.mlp.down_proj.weight.values").dtype == dtype
    index = json.loads((tmp_path / "c" / "duogpt.safetensors.index.json").read_text())
    assert index["metadata"]["duogpt_format_version"] == str(checkpoint.FORMAT_VERSION)
    assert meta["sparse_format"]["bytes"] < 0.7 * meta["sparse_format"]["dense_bytes"]  # 64-row tiles, bf16: 0.63
    assert meta["size"]["directory_bytes"] < meta["size"]["dense_bytes"]
    weights = checkpoint.read_weights(tmp_path / "c")
    assert all(torch.equal(weights[k], v) for k, v in masked_weights(model).items())


def test_load_holds_packed_linears_and_computes_the_masked_model(samples, tmp_path):
    model = pruned(samples)
    save(model, tmp_path / "c")
    sparse, tokenizer, meta = checkpoint.load(tmp_path / "c")
    assert sum(isinstance(m, DualSparseLinear) for m in sparse.modules()) == 14
    assert all(isinstance(m, DualSparseLinear) for _, _, m in linears_by_name(sparse).values())
    assert tokenizer is not None and set(sparsify.registry(sparse)) == set(meta["thresholds"])
    dense, _, _ = checkpoint.load(tmp_path / "c", runtime="dense")
    assert not any(isinstance(m, DualSparseLinear) for m in dense.modules())
    assert all(torch.equal(dense.state_dict()[k], v) for k, v in masked_weights(model).items())
    with torch.no_grad():  # 32 tokens: the batched path (unpack + matmul) gives the masked model's logits
        torch.testing.assert_close(sparse(input_ids=samples[:2]).logits, dense(input_ids=samples[:2]).logits)


def test_a_linear_packing_would_not_shrink_stays_dense(samples, tmp_path):
    model = pruned(samples, method="magnitude", weight_sparsity=0.0, act_sparsity=0.5)
    meta = save(model, tmp_path / "c")
    assert meta["sparse_format"]["bytes"] == 0
    loaded, _, _ = checkpoint.load(tmp_path / "c")
    assert not any(isinstance(m, DualSparseLinear) for m in loaded.modules())
    assert torch.equal(loaded.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)


def test_generate_and_pipeline(samples, tmp_path):
    model = pruned(samples)
    save(model, tmp_path / "c")
    sparse, tokenizer, _ = checkpoint.load(tmp_path / "c")
    dense, _, _ = checkpoint.load(tmp_path / "c", runtime="dense")
    ids = tokenizer("The jury said", return_tensors="pt")
    greedy = [m.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=0) for m in (sparse, dense)]
    assert torch.equal(greedy[0], greedy[1]) and greedy[0].shape[1] == ids["input_ids"].shape[1] + 10
    torch.manual_seed(0)
    sampled = sparse.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=True, top_p=0.9, pad_token_id=0)
    assert sampled.shape[1] == ids["input_ids"].shape[1] + 6
    out = pipeline("text-generation", model=sparse, tokenizer=tokenizer)("The jury", max_new_tokens=5)
    assert out[0]["generated_text"].startswith("The jury")


@pytest.mark.skipif(not triton_spmspv.available(), reason="triton is not installed")
def test_the_gpu_branch_computes_the_same_model(samples, tmp_path, monkeypatch):
    model = pruned(samples)
    save(model, tmp_path / "c")
    sparse, _, _ = checkpoint.load(tmp_path / "c")
    long, one = samples[:1, :20], samples[:1, :1]
    with torch.no_grad():
        prefill, step = sparse(input_ids=long).logits, sparse(input_ids=one).logits
        if torch.cuda.is_available():  # on a GPU machine: the real device
            sparse, long, one = sparse.to("cuda"), long.cuda(), one.cuda()
        else:  # CPU tensors down the CUDA branch, Triton interpreted
            monkeypatch.setenv(GPU_PATH_ENV, "1")
        # the Triton unpack for 20 rows, the Triton kernel for one
        torch.testing.assert_close(sparse(input_ids=long).logits.cpu(), prefill, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sparse(input_ids=one).logits.cpu(), step, rtol=1e-4, atol=1e-4)


def format1(model, out):
    """A checkpoint as format 1 wrote it: masked dense model-* shards, the packed copy beside, no layout."""
    save(model, out, layout="dense")
    packed = ShardWriter(out, PACKED_PREFIX)
    for name, (_, _, linear) in linears_by_name(model).items():
        packed.write(packed_form(linear).tensors(prefix=f"{name}."))
    packed.finish()
    meta = json.loads((out / "duogpt.json").read_text())
    meta["format_version"] = 1
    del meta["layout"], meta["size"]
    (out / "duogpt.json").write_text(json.dumps(meta))


def test_format1_checkpoints_still_load_and_convert(samples, tmp_path):
    model = pruned(samples)
    format1(model, tmp_path / "old")
    old, _, _ = checkpoint.load(tmp_path / "old")
    assert sum(isinstance(m, DualSparseLinear) for m in old.modules()) == 14
    assert main(["export", str(tmp_path / "old"), "--compact", str(tmp_path / "new")]) == 0
    assert checkpoint.layout_of(tmp_path / "new") == "compact"
    a, b = checkpoint.read_weights(tmp_path / "old"), checkpoint.read_weights(tmp_path / "new")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_dense_is_a_plain_transformers_model(samples, tmp_path, capsys):
    model = pruned(samples)
    save(model, tmp_path / "c")
    assert main(["export", str(tmp_path / "c"), "--dense", str(tmp_path / "plain")]) == 0
    assert "wrote" in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in masked_weights(model).items())
    meta = checkpoint.read_meta(tmp_path / "plain")
    assert meta["layout"] == "dense" and meta["thresholds"] == model.duogpt_report.thresholds
    again, _, _ = checkpoint.load(tmp_path / "plain")  # duogpt reads it too, sparsifiers and all
    assert set(sparsify.registry(again)) == set(meta["thresholds"])


def _exit_2(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_export_refuses_bad_targets(samples, tmp_path, capsys, tiny_checkpoint):
    model = pruned(samples)
    save(model, tmp_path / "c")
    assert "the checkpoint itself" in _exit_2(capsys, ["export", str(tmp_path / "c"), "--dense", str(tmp_path / "c")])
    assert "no duogpt.json" in _exit_2(capsys, ["export", str(tiny_checkpoint), "--dense", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_newer_format_and_mismatched_config_are_refused(samples, tmp_path):
    model = pruned(samples)
    save(model, tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "duogpt.json").read_text())
    (tmp_path / "c" / "duogpt.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UsageError, match="newer than this duogpt reads"):
        checkpoint.load(tmp_path / "c")
    (tmp_path / "c" / "duogpt.json").write_text(json.dumps(meta))
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(UsageError, match="does not match its config"):
        checkpoint.load(tmp_path / "c")


def test_a_checkpoint_of_another_model_is_refused(samples, tmp_path):
    model = pruned(samples)
    save(model, tmp_path / "c")
    other = tiny_model(tiny_llama_config(num_hidden_layers=3))
    (tmp_path / "c" / "config.json").write_text(other.config.to_json_string())
    with pytest.raises(UsageError, match="does not match its config"):
        checkpoint.load(tmp_path / "c")
