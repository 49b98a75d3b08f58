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
from duogpt.pruning import alpha_choice, groups, methods, sparsify, statistics
from duogpt.pruning.pipeline import prune_model
from duogpt.pruning.statistics import capture_inputs


def run(model, samples, held=None, **settings):
    cfg = PruneConfig(**{"nsamples": 8, "seqlen": 32, "batch_size": 4, "blocksize": 16, **settings})
    return prune_model(model, samples, cfg, progress=False, held=held)


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


def _held():
    return torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))


def test_alpha_auto_keeps_each_groups_alpha_with_the_least_held_out_loss(samples):
    model = tiny_model()
    result = run(model, samples, weight_sparsity=0.5, act_sparsity=0.5, alpha="auto", held=_held())
    _, blocks = find_blocks(model)
    assert list(result.alpha_losses) == [f"layers.{b.index}.{g}" for b in blocks for g in GROUPS]
    reports = iter(result.linears)
    for block in blocks:
        for group in GROUPS:
            losses = result.alpha_losses[f"layers.{block.index}.{group}"]
            assert [float(a) for a in losses] == list(alpha_choice.ALPHAS)
            best = min(losses, key=losses.get)
            for _ in block.groups[group]:
                r = next(reports)
                assert (r.alpha, r.ridge) == (float(best), 0.1), r.name
    assert next(reports, None) is None  # one report per linear, the chosen solve's
    assert len({r.alpha for r in result.linears}) > 1  # per group, not one global choice
    fixed = run(tiny_model(), samples, alpha=0.5, ridge=0.2)  # a fixed alpha is recorded as given
    assert {(r.alpha, r.ridge) for r in fixed.linears} == {(0.5, 0.2)} and fixed.alpha_losses == {}


def test_alpha_auto_with_one_candidate_is_that_alpha_bit_for_bit(samples, monkeypatch):
    """The held-out windows enter no threshold and no statistic: with 0.25 the only candidate, --alpha auto
    prunes exactly as --alpha 0.25."""
    monkeypatch.setattr(alpha_choice, "ALPHAS", (0.25,))
    auto, fixed = tiny_model(), tiny_model()
    a = run(auto, samples, weight_sparsity=0.5, act_sparsity=0.5, alpha="auto", held=_held())
    b = run(fixed, samples, weight_sparsity=0.5, act_sparsity=0.5, alpha=0.25)
    assert a.thresholds == b.thresholds
    for (name, p), q in zip(auto.named_parameters(), fixed.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_held_out_loss_from_any_block_is_the_models_loss():
    model = tiny_model().eval()
    ids = _held()
    with torch.no_grad():
        expected = float(model(input_ids=ids, labels=ids).loss)
        hidden, kwargs = capture_inputs(model, [ids])
        after_first = find_blocks(model)[0][0](hidden[0], **kwargs[0][0])
    assert alpha_choice.held_out_loss(model, 0, hidden[0], ids) == pytest.approx(expected, rel=1e-5)
    assert alpha_choice.held_out_loss(model, 1, after_first, ids) == pytest.approx(expected, rel=1e-5)
    assert isinstance(find_blocks(model)[0][0], type(find_blocks(tiny_model())[0][0]))  # the blocks are put back


def test_choose_keeps_the_least_loss_solve_and_starts_each_from_the_original():
    w = torch.zeros(3)
    seen = []

    def solve(alpha):
        seen.append(w.clone())
        w.add_(alpha)
        return [f"report {alpha}"]

    alpha, reports, losses = alpha_choice.choose([w], solve, lambda: abs(float(w[0]) - 0.1))
    assert alpha == 0.125 and reports == ["report 0.125"] and torch.equal(w, torch.full((3,), 0.125))
    assert all(torch.equal(s, torch.zeros(3)) for s in seen) and list(losses) == list(alpha_choice.ALPHAS)


def test_alpha_auto_needs_held_out_windows(samples):
    with pytest.raises(UsageError, match="held-out windows"):
        run(tiny_model(), samples, alpha="auto")


@pytest.mark.parametrize("method", ["duogpt", "sparsegpt"])
def test_sink_weight_counts_each_sequences_first_token_that_many_times(method, samples, monkeypatch):
    """The first group's statistics at sink weight 4 are those at weight 1 plus 3x the sink tokens' own."""
    seen, sink = [], []

    class Sums(statistics.Accumulator):  # also sums the sink tokens' rows apart (weight 1 run)
        def add(self, fit, dense=None):
            first = torch.arange(fit.shape[0]) % 32 == 0
            f = fit[first].double()
            d = None if dense is None else dense[first].double()
            sink.append((f.T @ f, None if d is None else (d - f).T @ f))
            super().add(fit, dense)

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
    [(dict(correction="sequential"), "--correction target")],
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
