"""Every family the README names, as a tiny random model: prune with every method, eval, save, reload, sparse runtime.

Layouts covered: Llama-3 (GQA, llama3 rope scaling), Mistral (sliding window), Qwen2 (q/k/v
biases), Qwen3 (q/k norms), Gemma (RMSNorm with +1, tied embeddings), Gemma-2 (soft-capping,
query_pre_attn_scalar, sliding window), Gemma-3 text (local/global layers, BOS tokenizer),
Phi-3 (fused qkv_proj and gate_up_proj), SmolLM3.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    SmolLM3Config,
)

import duogpt
from conftest import bos_tokenizer, byte_tokenizer
from duogpt import checkpoint, corpus
from duogpt.errors import UsageError
from duogpt.evaluation.perplexity import token_nlls
from duogpt.experiments import structured
from duogpt.inspection import inspect_model
from duogpt.models import find_blocks

VOCAB = 260  # 256 bytes, the BOS (256) and spare ids
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=256,
    eos_token_id=0,
    pad_token_id=0,
)
GEMMA = dict(head_dim=16, hidden_activation="gelu_pytorch_tanh")
FAMILIES = {
    "llama3": lambda: LlamaConfig(
        **SIZES,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "mistral": lambda: MistralConfig(**SIZES, sliding_window=16),
    "qwen2": lambda: Qwen2Config(**SIZES),
    "qwen3": lambda: Qwen3Config(**SIZES, head_dim=16),
    "gemma": lambda: GemmaConfig(**SIZES, **GEMMA),
    "gemma2": lambda: Gemma2Config(
        **SIZES, **GEMMA, sliding_window=16, query_pre_attn_scalar=16, final_logit_softcapping=5.0
    ),
    "gemma3": lambda: Gemma3TextConfig(**SIZES, **GEMMA, sliding_window=16, query_pre_attn_scalar=16),
    "phi3": lambda: Phi3Config(**SIZES),
    "smollm3": lambda: SmolLM3Config(**SIZES),
}
BOS_FAMILIES = {"gemma", "gemma2", "gemma3", "llama3"}  # their tokenizers add a BOS
METHODS = ["duogpt", "sparsegpt", "wanda", "magnitude"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES[request.param](), dtype=torch.float32).eval()
    path = tmp_path_factory.mktemp(request.param) / "model"
    model.save_pretrained(path)
    (bos_tokenizer() if request.param in BOS_FAMILIES else byte_tokenizer()).save_pretrained(path)
    return request.param, path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("method", METHODS)
def test_prune_save_reload_and_runtimes(family_checkpoint, method, text_file, tmp_path):
    family, path = family_checkpoint
    out = tmp_path / method
    pruned = duogpt.prune(
        str(path), method=method, calib=str(text_file), nsamples=4, seqlen=32, out=out, progress=False
    )
    meta = checkpoint.read_meta(out)
    assert meta["calib_bos_token_id"] == (256 if family in BOS_FAMILIES else None)
    for report in meta["linears"]:
        assert abs(report["weight_sparsity"] - 0.5) < 0.02, report
    ids = torch.randint(1, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    reloaded, _, _ = checkpoint.load(out)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(pruned, ids), rtol=0, atol=0)
    sparse, _, _ = checkpoint.load(out, runtime="sparse")
    dense_logits, sparse_logits = _logits(reloaded, ids), _logits(sparse, ids)
    rel = float((sparse_logits - dense_logits).abs().max() / dense_logits.abs().max())
    assert rel < 1e-4, rel
    nll = token_nlls(reloaded, ids)  # the chunked loss equals the loss of the full logits
    full = torch.nn.functional.cross_entropy(dense_logits[0, :-1], ids[0, 1:], reduction="none").double()
    torch.testing.assert_close(nll[0], full, rtol=1e-5, atol=1e-5)


def test_fused_projections_are_pruned_part_by_part(tmp_path, text_file):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES["phi3"](), dtype=torch.float32).eval()
    _, blocks = find_blocks(model)
    attn = blocks[0].module.self_attn
    parts = blocks[0].parts("qkv_proj", attn.qkv_proj)
    assert [(p.name, p.stop - p.start) for p in parts] == [
        ("qkv_proj[q]", 64),
        ("qkv_proj[k]", 32),
        ("qkv_proj[v]", 32),
    ]
    path = tmp_path / "phi3"
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    pruned = duogpt.prune(str(path), method="magnitude", weight_sparsity=0.5, act_sparsity=0.5, calib=str(text_file),
                          nsamples=4, seqlen=32, progress=False)  # fmt: skip
    W = find_blocks(pruned)[1][0].module.self_attn.qkv_proj.weight
    for p in parts:  # each part at its own 50%, as separate q/k/v linears would be
        assert int((W[p.start : p.stop] == 0).sum()) == W[p.start : p.stop].numel() // 2
    names = {r.name for r in pruned.duogpt_report.linears}
    assert "layers.0.mlp.gate_up_proj[up]" in names and "layers.0.self_attn.qkv_proj[v]" in names
    assert set(pruned.duogpt_sparsifiers) == {
        f"layers.{i}.{g}" for i in range(2) for g in ("qkv", "o", "gate_up", "down")
    }


def test_gemma3_windows_and_token_nlls_equal_a_plain_evaluation_with_bos(text_file):
    """Every window is BOS + 31 consecutive text tokens, and the scored NLLs are transformers' own."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES["gemma3"](), dtype=torch.float32).eval()
    tok = bos_tokenizer()
    text = text_file.read_text()
    bos = corpus.bos_token(tok)
    windows = corpus.eval_windows(corpus.tokenize(tok, text), 32, bos=bos)
    plain = tok(text, add_special_tokens=False)["input_ids"]
    expected = [[256] + plain[i : i + 31] for i in range(0, len(plain) - 30, 31)]
    assert windows.tolist() == expected
    ours = token_nlls(model, windows)
    with torch.no_grad():
        logits = model(input_ids=windows).logits
    theirs = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), windows[:, 1:], reduction="none")
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5)
    never = corpus.eval_windows(corpus.tokenize(tok, text), 32, bos=corpus.bos_token(tok, "never"))
    assert never[0].tolist() == plain[:32]  # the paper protocol: the text cut into windows, no BOS


def test_inspect_describes_the_layout_without_reading_weights(family_checkpoint, tmp_path):
    family, path = family_checkpoint
    (path / "model.safetensors").rename(tmp_path / "weights")  # inspect needs only config and tokenizer
    try:
        info = inspect_model(str(path))
    finally:
        (tmp_path / "weights").rename(path / "model.safetensors")
    assert info["blocks"] == 2 and info["family"] == FAMILIES[family]().model_type
    assert info["bos_token_id"] == (256 if family in BOS_FAMILIES else None)
    assert list(info["sparsifier_inputs_per_block"]) == ["qkv", "o", "gate_up", "down"]
    assert info["fused"] == (["gate_up_proj", "qkv_proj"] if family == "phi3" else [])
    assert info["prune"]["estimated_memory_mb"] > 0


def test_width_pruning_refuses_fused_projections(samples):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES["phi3"](), dtype=torch.float32).eval()
    with pytest.raises(UsageError, match="fuses them"):
        structured.prune_width(model, samples, 0.25)
