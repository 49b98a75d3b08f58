"""The lean decode step: the same bits as transformers' layer forward, per family and runtime, or no change."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from conftest import tiny_model
from duogpt import checkpoint
from duogpt.runtime.decode_step import has_lean_decode, lean_decode, qualifies
from duogpt.runtime.linear import DecodeHead, decode_paths
from test_families import FAMILIES

LEAN_FAMILIES = {"llama3", "mistral", "qwen2", "qwen3", "gemma", "smollm3"}


def _decode_logits(model, ids, steps: int) -> list[torch.Tensor]:
    """Prefill ``ids``, then ``steps`` greedy decode steps with a KV cache: every step's logits."""
    cache = DynamicCache()
    with torch.no_grad():
        out = model(input_ids=ids, cache=cache, use_cache=True)
        logits = [out.logits[:, -1]]
        for _ in range(steps):
            token = logits[-1].argmax(-1, keepdim=True)
            logits.append(model(input_ids=token, cache=cache, use_cache=True).logits[:, -1])
    return logits


def _assert_same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x, y), f"step {i}: max difference {float((x - y).abs().max())}"


def _family_model(family: str):
    torch.manual_seed(0)
    config = FAMILIES[family]()
    if family == "smollm3":
        config.no_rope_layers = [1, 0]  # its second layer without rotary embedding (NoPE)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lean_step_gives_the_same_bits_as_transformers(family):
    model = _family_model(family)
    ids = torch.randint(1, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    reference = _decode_logits(model, ids, 6)
    layers = lean_decode(model)
    assert layers == (model.config.num_hidden_layers if family in LEAN_FAMILIES else 0)
    _assert_same_bits(_decode_logits(model, ids, 6), reference)


def test_decode_steps_take_the_lean_step(monkeypatch):
    """After the prefill, no decode step runs the layer class's own forward."""
    model = tiny_model()
    assert lean_decode(model) == 2
    cache = DynamicCache()
    calls = []
    layer_class = type(model.model.layers[0])
    original = layer_class.forward

    def counting(self, *args, **kwargs):
        calls.append(args[0].shape[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(layer_class, "forward", counting)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7]]), cache=cache, use_cache=True)
        for _ in range(3):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
    assert calls == [3, 3]  # the prefill, one call per layer; the decode steps none


def test_generate_with_and_without_padding_is_unchanged():
    """Left padding gives a mask: those steps keep transformers' forward; outputs equal either way."""
    model = tiny_model()
    ids = torch.tensor([[0, 0, 9, 10, 11], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        padded = model.generate(input_ids=ids, attention_mask=mask, **kwargs).logits
        single = model.generate(input_ids=ids[1:], **kwargs).logits
        lean_decode(model)
        _assert_same_bits(model.generate(input_ids=ids, attention_mask=mask, **kwargs).logits, padded)
        _assert_same_bits(model.generate(input_ids=ids[1:], **kwargs).logits, single)


def test_lean_step_can_be_removed_and_survives_copies_and_pickles():
    model = tiny_model()
    ids = torch.tensor([[3, 4, 5]])
    reference = _decode_logits(model, ids, 4)
    lean_decode(model)
    twin = copy.deepcopy(model)
    assert has_lean_decode(twin)
    for a, b in zip(twin.model.layers, model.model.layers, strict=True):
        assert a.forward.layer is a and a.forward.rope is twin.model.layers[0].forward.rope
        assert a.forward.rope is not b.forward.rope
    _assert_same_bits(_decode_logits(twin, ids, 4), reference)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    again = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert again.model.layers[1].forward.layer is again.model.layers[1]
    _assert_same_bits(_decode_logits(again, ids, 4), reference)
    assert lean_decode(model, enabled=False) == 0 and not has_lean_decode(model)
    assert "forward" not in vars(model.model.layers[0])
    _assert_same_bits(_decode_logits(model, ids, 4), reference)


def test_layers_that_differ_keep_their_forward():
    model = tiny_model()
    layer = model.model.layers[0]
    assert qualifies(layer)
    layer.extra_norm = torch.nn.LayerNorm(4)  # a child the lean step would not run
    assert not qualifies(layer)
    del layer.extra_norm
    del layer.self_attn.o_proj
    assert not qualifies(layer)


@pytest.mark.parametrize("runtime", ["dense", "sparse"])
def test_loaded_checkpoints_decode_through_the_lean_step_with_the_same_bits(
    tiny_checkpoint, text_file, samples, tmp_path, runtime
):
    import duogpt

    out = tmp_path / "pruned"
    duogpt.prune(str(tiny_checkpoint), method="magnitude", calib=str(text_file), nsamples=4, seqlen=32, out=out,
                 progress=False)  # fmt: skip
    model, _, _ = checkpoint.load(out, runtime=runtime)
    assert has_lean_decode(model)
    ids = samples[:1, :6]
    lean = _decode_logits(model, ids, 5)
    lean_decode(model, enabled=False)
    _assert_same_bits(_decode_logits(model, ids, 5), lean)
    head = model.get_output_embeddings()
    assert isinstance(head, DecodeHead)  # the one-row head by the dense kernel, on either runtime
    decode_paths(model, enabled=False)
    plain = model.get_output_embeddings()
    assert type(plain) is torch.nn.Linear and plain.weight is head.weight is model.model.embed_tokens.weight
    assert not has_lean_decode(model)
    for a, b in zip(_decode_logits(model, ids, 5), lean, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
