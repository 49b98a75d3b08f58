"""The block pipeline on tiny random models: every method, every supported family."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import tiny_llama_config, tiny_model
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.models import GROUPS, find_blocks
from duogpt.pruning import groups, methods, pipeline, solvers, sparsify, statistics
from duogpt.pruning.pipeline import prune_model


def run(model, samples, **settings):
    cfg = PruneConfig(**{"nsamples": 8, "seqlen": 32, "batch_size": 4, "blocksize": 16, **settings})
    return prune_model(model, samples, cfg, progress=False)


@pytest.mark.parametrize("method", ["duogpt", "sparsegpt", "wanda", "magnitude"])
def test_each_method_reaches_exact_sparsity_and_thresholds(method, samples):
    model = tiny_model()
    result = run(model, samples, method=method, weight_sparsity=0.5, act_sparsity=0.4)
    _, blocks = find_blocks(model)
    for block in blocks:
        for linear in block.linears().values():
            assert int((linear.weight == 0).sum()) == linear.weight.numel() // 2
    assert set(result.thresholds) == {f"layers.{b}.{g}" for b in range(2) for g in GROUPS}
    for name, measured in result.calib_act_sparsity.items():
        assert abs(measured - 0.4) < 0.01, name
    assert len(result.linears) == 14
    if method in ("duogpt", "sparsegpt"):
        assert all(r.rel_error is not None and r.rel_error >= 0 for r in result.linears)
    # the thresholds reproduce the target on the calibration data of the final model
    sparsify.reset_counters(model)
    with torch.no_grad():
        model(input_ids=samples)
    overall, _ = sparsify.measured_sparsity(model)
    assert abs(overall - 0.4) < 0.01


def test_duogpt_without_activation_sparsity_and_alpha_zero_is_sparsegpt(samples):
    a, b = tiny_model(), tiny_model()
    run(a, samples, method="duogpt", act_sparsity=0.0, alpha=0.0)
    run(b, samples, method="sparsegpt", act_sparsity=0.0)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, msg=na)


def test_duogpt_reconstructs_dense_output_better_than_sparsegpt(samples):
    """Logit error against the dense model on the calibration data, both dual-sparse."""
    dense = tiny_model()
    with torch.no_grad():
        target = dense(input_ids=samples).logits
    errors = {}
    for method in ("sparsegpt", "duogpt"):
        model = tiny_model()
        run(model, samples, method=method, weight_sparsity=0.5, act_sparsity=0.5, alpha=1.0, ridge=0.01)
        with torch.no_grad():
            errors[method] = float(((model(input_ids=samples).logits - target) ** 2).mean())
    assert errors["duogpt"] < errors["sparsegpt"]


def test_alpha_auto_chooses_and_records_alpha_and_ridge_per_linear(samples):
    model = tiny_model()
    result = run(model, samples, method="duogpt", weight_sparsity=0.5, act_sparsity=0.5, alpha="auto")
    chosen = [(r.alpha, r.ridge) for r in result.linears]
    assert len(chosen) == 14 and all(0 <= a <= solvers.MAX_ALPHA and r in solvers.AUTO_RIDGES for a, r in chosen)
    assert len(set(chosen)) > 1  # per linear, not one global choice
    # a fixed alpha is recorded as given
    fixed = run(tiny_model(), samples, method="duogpt", alpha=0.5, ridge=0.2)
    assert {(r.alpha, r.ridge) for r in fixed.linears} == {(0.5, 0.2)}


def test_alpha_auto_holds_out_every_fourth_sequence_of_the_whole_set():
    split = pipeline._Split((64, 64, 32), (1, 2), seqlen=16, batch_size=4)  # this rank: chunks 1 and 2
    rows = groups.held_rows(split, 0, 64)  # sequences 4..7, the first token of each left in the fit part
    assert rows.tolist() == [False] * 48 + [False] + [True] * 15
    assert groups.held_rows(split, 1, 32).tolist() == [False] * 16 + [False] * 16  # sequences 8, 9


@pytest.mark.parametrize("method", ["duogpt", "sparsegpt"])
def test_sink_weight_counts_each_sequences_first_token_that_many_times(method, samples, monkeypatch):
    """The first group's statistics at sink weight 4 are those at weight 1 plus 3x the sink tokens' own."""
    seen, sink = [], []

    class Sums(statistics.Accumulator):  # also sums the sink tokens' rows apart (weight 1 run)
        def add(self, fit, dense=None, held=None):
            first = torch.arange(fit.shape[0]) % 32 == 0
            f = fit[first].double()
            d = None if dense is None else dense[first].double()
            sink.append((f.T @ f, None if d is None else (d - f).T @ f))
            super().add(fit, dense, held)

    entry = methods.METHODS[method]
    solve = lambda W, st, *a: seen.append(st) or entry.solve(W, st, *a)  # noqa: E731
    monkeypatch.setitem(methods.METHODS, method, dataclasses.replace(entry, solve=solve))
    monkeypatch.setattr(groups, "Accumulator", Sums)
    run(tiny_model(), samples, method=method, sink_weight=1.0)  # 2 chunks of 4 sequences of 32 tokens
    one, H_sink = seen[0], sink[0][0] + sink[1][0]
    G_sink = None if sink[0][1] is None else sink[0][1] + sink[1][1]
    seen.clear()
    run(tiny_model(), samples, method=method, sink_weight=4.0)
    close = dict(rtol=1e-4, atol=1e-5 * float(one.H.abs().max()))  # float32 products, summed in float64
    torch.testing.assert_close(seen[0].H, one.H + 3 * H_sink, **close)
    assert not torch.allclose(seen[0].H, one.H, **close)
    if method == "duogpt":
        torch.testing.assert_close(seen[0].G, one.G + 3 * G_sink, **close)
        assert not torch.allclose(seen[0].G, one.G, **close)


def test_weigh_sink_scales_first_rows_and_weight_one_changes_nothing():
    x = torch.randn(3 * 5, 4)
    weights = torch.ones(15).index_fill_(0, torch.tensor([0, 5, 10]), 9.0)
    weighted = statistics.weigh_sink_(x.clone(), 5, 9.0)
    torch.testing.assert_close(weighted.T @ weighted, x.T @ (weights[:, None] * x))
    assert torch.equal(statistics.weigh_sink_(x.clone(), 5, 1.0), x)


@pytest.mark.parametrize(
    "settings, message",
    [(dict(nsamples=3, batch_size=1), "--nsamples 4 or more"), (dict(correction="sequential"), "--correction target")],
)
def test_alpha_auto_refuses_what_it_cannot_do(settings, message):
    with pytest.raises(UsageError, match=message):
        PruneConfig(alpha="auto", **settings).validate()
    with pytest.raises(UsageError, match="neither a number nor 'auto'"):
        PruneConfig(alpha="fast").validate()


def test_pruning_is_deterministic(samples):
    a, b = tiny_model(), tiny_model()
    ra = run(a, samples, method="duogpt")
    rb = run(b, samples, method="duogpt")
    assert ra.thresholds == rb.thresholds
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_pattern_through_pipeline(pattern, samples):
    model = tiny_model()
    run(model, samples, method="duogpt", pattern=pattern)
    n, m = map(int, pattern.split(":"))
    for block in find_blocks(model)[1]:
        for linear in block.linears().values():
            W = linear.weight
            assert ((W == 0).view(W.shape[0], -1, m).sum(-1) == n).all()


def family_configs():
    from transformers import GemmaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return {
        "mistral": MistralConfig(**common),
        "qwen2": Qwen2Config(**common),
        "qwen3": Qwen3Config(**common, head_dim=16),
        "gemma": GemmaConfig(**common, head_dim=16),
    }


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma"])
def test_supported_families(family, samples):
    model = tiny_model(family_configs()[family])
    result = run(model, samples, method="duogpt", weight_sparsity=0.5, act_sparsity=0.5)
    assert len(result.thresholds) == 8
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=samples).logits).all()


def test_unsupported_architecture_is_refused(samples):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(UsageError, match="unsupported architecture GPT2LMHeadModel"):
        run(gpt2, samples)


def test_float64_model_is_supported(samples):
    model = tiny_model(tiny_llama_config()).double()
    run(model, samples, method="sparsegpt")
    assert next(model.parameters()).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_keep_their_dtype(dtype, samples):
    model = tiny_model().to(dtype)
    result = run(model, samples, method="duogpt")
    assert next(model.parameters()).dtype == dtype
    assert all(abs(r.weight_sparsity - 0.5) < 1e-6 for r in result.linears)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=samples).logits.float()).all()
