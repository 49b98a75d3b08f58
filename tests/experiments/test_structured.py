"""Structured pruning: block removal (ShortGPT) and width pruning (FLAP) make real smaller models."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, MistralConfig, Qwen2Config, Qwen3Config

from conftest import byte_tokenizer, tiny_llama_config, tiny_model
from duogpt.errors import UsageError
from duogpt.experiments import structured


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def make_identity(model, index: int) -> None:
    layer = model.model.layers[index]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def family_config(family: str, **overrides):
    common = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    common.update(overrides)
    if family == "llama":
        return tiny_llama_config(**common)
    if family == "qwen3":  # has config.layer_types
        return Qwen3Config(**common, head_dim=16)
    if family == "gemma":
        return GemmaConfig(**common, head_dim=16)
    return {"mistral": MistralConfig, "qwen2": Qwen2Config}[family](**common)


def test_identity_block_has_lowest_influence_and_is_removed_first(samples):
    model = tiny_model(tiny_llama_config(num_hidden_layers=4))
    make_identity(model, 2)
    before = logits(model, samples)
    scores = structured.block_influence(model, samples)
    assert len(scores) == 4 and abs(scores[2]) < 1e-6
    assert min(s for i, s in enumerate(scores) if i != 2) > 1e-3
    assert structured.remove_blocks(model, 1, samples) == [2]
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    torch.testing.assert_close(logits(model, samples), before, rtol=0, atol=1e-5)


def test_removal_equals_model_built_without_the_blocks(samples):
    model = tiny_model(tiny_llama_config(num_hidden_layers=4))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    removed = structured.remove_blocks(model, 2, samples)
    kept = [i for i in range(4) if i not in removed]
    reference = tiny_model(tiny_llama_config(num_hidden_layers=2))
    state = {}
    for key, value in original.items():
        if key.startswith("model.layers."):
            index, rest = key[len("model.layers.") :].split(".", 1)
            if int(index) not in kept:
                continue
            key = f"model.layers.{kept.index(int(index))}.{rest}"
        state[key] = value
    reference.load_state_dict(state)
    torch.testing.assert_close(logits(model, samples), logits(reference, samples), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_greedy_generation_with_cache_works_after_removal(family, samples):
    config = family_config(family)
    if family == "qwen3":
        config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
        config.sliding_window = 4
    model = tiny_model(config)
    make_identity(model, 0)
    assert structured.remove_blocks(model, 1, samples) == [0]
    if family == "qwen3":
        assert model.config.layer_types == ["sliding_attention", "full_attention"]
    prompt = samples[:1, :8]
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 20)
    assert torch.equal(cached, uncached)


def test_width_pruning_with_zero_fractions_changes_nothing(samples):
    model = tiny_model()
    before = logits(model, samples)
    report = structured.prune_width(model, samples, mlp_fraction=0.0, kv_group_fraction=0.0)
    assert report["params_after"] == report["params_before"]
    assert report["removed_mlp_channels_per_block"] == 0 and not report["compensated_mlp"]
    assert not model.config.mlp_bias and model.model.layers[0].mlp.down_proj.bias is None
    torch.testing.assert_close(logits(model, samples), before, rtol=0, atol=0)


def constant_mlp_channels(seed: int = 0):
    """A model (with MLP biases) whose MLP channels 0..15 are the same nonzero constant on every token."""
    model = tiny_model(tiny_llama_config(mlp_bias=True), seed)
    for layer in model.model.layers:
        with torch.no_grad():
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight[:16] = 0
                lin.bias[:16] = 1.0
    return model


@pytest.mark.parametrize("compensate", [True, False])
def test_mlp_compensation_reproduces_constant_channels_exactly(compensate, samples):
    model = constant_mlp_channels()
    before = logits(model, samples)
    report = structured.prune_width(model, samples, mlp_fraction=0.1, compensate=compensate)
    assert report["intermediate_size"] == 144 and model.config.intermediate_size == 144
    assert report["compensated_mlp"] is compensate
    error = (logits(model, samples) - before).abs().max()
    assert (error < 1e-5) if compensate else (error > 1e-3)


@pytest.mark.parametrize("compensate", [True, False])
def test_attention_compensation_reproduces_constant_group_exactly(compensate, samples):
    model = tiny_model(tiny_llama_config(attention_bias=True))
    for layer in model.model.layers:  # KV head 1 has a constant value, so its query heads output a constant
        with torch.no_grad():
            layer.self_attn.v_proj.weight[16:] = 0
            layer.self_attn.v_proj.bias[16:] = torch.linspace(-1, 1, 16)
    before = logits(model, samples)
    report = structured.prune_width(model, samples, 0.0, kv_group_fraction=0.5, compensate=compensate)
    assert report["removed_kv_groups_per_block"] == 1 and report["compensated_attention"] is compensate
    error = (logits(model, samples) - before).abs().max()
    assert (error < 1e-5) if compensate else (error > 1e-3)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4), (8, 2)])
def test_kv_group_removal_keeps_shapes_consistent(heads, kv_heads, samples):
    config = tiny_llama_config(num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=16)
    model = tiny_model(config)
    report = structured.prune_width(model, samples, mlp_fraction=0.25, kv_group_fraction=0.5)
    kv, q = kv_heads // 2, heads // 2
    assert (report["num_attention_heads"], report["num_key_value_heads"]) == (q, kv)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (q, kv, 16)
    assert report["intermediate_size"] == 120 and report["params_after"] < report["params_before"]
    for layer in model.model.layers:
        attn = layer.self_attn
        assert attn.q_proj.weight.shape == (q * 16, 64) and attn.o_proj.weight.shape == (64, q * 16)
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (kv * 16, 64)
        assert attn.num_key_value_groups == q // kv
        assert layer.mlp.gate_proj.weight.shape == (120, 64) and layer.mlp.down_proj.weight.shape == (64, 120)
    assert torch.isfinite(logits(model, samples)).all()
    out = model.generate(samples[:1, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "mistral"])
def test_saved_structured_model_reloads_with_identical_logits(family, samples, tmp_path):
    model = tiny_model(family_config(family))
    structured.remove_blocks(model, 1, samples)
    report = structured.prune_width(model, samples, mlp_fraction=0.25, kv_group_fraction=0.5)
    assert report["compensated_mlp"] is (family == "llama")  # only Llama's config has mlp_bias
    assert report["compensated_attention"] is (family in ("llama", "qwen3", "gemma"))
    assert bool(report["notes"]) is (family != "llama")
    out = structured.save_model(model, byte_tokenizer(), tmp_path / "pruned")
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reloaded.eval()
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.intermediate_size == 96
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_after"]
    torch.testing.assert_close(logits(reloaded, samples), logits(model, samples), rtol=0, atol=0)


def test_save_refuses_existing_directory_unless_forced(tmp_path):
    model, tokenizer = tiny_model(), byte_tokenizer()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(UsageError, match="--force"):
        structured.save_model(model, tokenizer, tmp_path / "out")
    structured.save_model(model, tokenizer, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("kwargs", [dict(mlp_fraction=-0.1), dict(mlp_fraction=1.0), dict(mlp_fraction=math.nan)])
def test_bad_mlp_fraction_is_refused(kwargs, samples):
    with pytest.raises(UsageError, match="mlp_fraction"):
        structured.prune_width(tiny_model(), samples, **kwargs)


@pytest.mark.parametrize("fraction", [-0.5, 1.0, 2.0])
def test_bad_kv_group_fraction_is_refused(fraction, samples):
    with pytest.raises(UsageError, match="kv_group_fraction"):
        structured.prune_width(tiny_model(), samples, 0.1, kv_group_fraction=fraction)


@pytest.mark.parametrize("n", [-1, 2, 3])
def test_bad_block_count_is_refused(n, samples):
    model = tiny_model()
    with pytest.raises(UsageError, match=f"cannot remove {n} of 2 blocks"):
        structured.remove_blocks(model, n, samples)
    assert len(model.model.layers) == 2
