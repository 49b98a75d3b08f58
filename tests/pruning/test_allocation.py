"""Per-layer targets: the byte budget, uniform targets for a speedup, the allocation search, and the
prune that follows them."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama_config, tiny_model
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.models import find_blocks
from duogpt.pruning import allocation, pipeline
from duogpt.pruning.allocation import Budget
from duogpt.pruning.pipeline import prune_model
from duogpt.runtime.costmodel import decode_cost


def model4():
    return tiny_model(tiny_llama_config(num_hidden_layers=4))


def test_budget_matches_the_cost_model_of_a_pruned_model(samples):
    model = model4()
    budget = Budget.of(model, context=32)
    assert budget.dense == pytest.approx(decode_cost(model, context=32, sparse_runtime=False).total)
    cfg = PruneConfig(method="magnitude", nsamples=8, seqlen=32, batch_size=4, weight_sparsity=0.5, act_sparsity=0.5)
    result = prune_model(model, samples, cfg, progress=False)
    measured = decode_cost(model, dict.fromkeys(result.targets, 0.5), context=32)
    assert result.estimated_decode_speedup == pytest.approx(budget.dense / measured.total, rel=1e-6)
    assert set(result.targets.values()) == {(0.5, 0.5)}


def test_uniform_targets_for_a_speedup_and_an_unreachable_one():
    model = model4()
    budget = Budget.of(model, context=32)
    targets = allocation.uniform_for_speedup(model, 1.8, budget)
    assert budget.speedup(model, targets) == pytest.approx(1.8, rel=1e-6)
    (p_w, p_x), *_ = set(targets.values())
    assert p_w == p_x and 0.3 < p_w < 0.6
    with pytest.raises(UsageError, match=r"target speedup 50 is out of reach: the largest reachable is \d"):
        allocation.uniform_for_speedup(model, 50, budget)


def test_at_cost_meets_the_speedup_with_the_shape_and_says_when_no_shift_can():
    model = model4()
    _, blocks = find_blocks(model)
    budget = Budget.of(model, context=32)
    shape = allocation.uniform_shape(blocks) | {"x.down": 0.2, "w.depth": 0.2}
    targets = allocation.at_cost(model, shape, 1.8, budget)
    assert budget.speedup(model, targets) == pytest.approx(1.8, rel=1e-4)
    first, last = targets["layers.0.down"], targets["layers.3.down"]
    assert last[0] - first[0] == pytest.approx(0.2, abs=1e-5)  # the weight depth slope
    assert first[1] - first[0] == pytest.approx(0.3, abs=1e-5)  # activation offset 0.2, slope at depth -0.5
    assert targets["layers.1.qkv"][1] == pytest.approx(targets["layers.1.qkv"][0] + 0.2 / 6, abs=1e-5)
    assert targets["layers.2.o"] == targets["layers.2.qkv"]
    balanced = allocation.at_cost(model, shape | {"balance": 0.1}, 1.8, budget)
    assert balanced["layers.2.o"][1] - balanced["layers.2.o"][0] == pytest.approx(0.2 - 0.2 / 6, abs=1e-5)
    assert allocation.at_cost(model, shape | {"w.qkv": -2.0, "x.qkv": -2.0}, 3.0, budget) is None


def test_every_number_of_the_prior_is_a_number_of_a_llama_shape():
    # the search starts from PRIOR's numbers where the shape has them: a misspelt one would be dropped unseen
    _, blocks = find_blocks(model4())
    shape = allocation.uniform_shape(blocks)
    assert set(allocation.PRIOR) <= set(shape)


def test_proxy_masks_inside_its_forward_only_and_is_the_dense_model_at_zero(samples):
    model = model4()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    proxy = allocation._Proxy(model, samples[:4], samples[-2:])
    dense = allocation.uniform(model, 0.0, 0.0)
    with torch.no_grad(), allocation._bfloat16_if_fast(samples.device):  # as the proxy scores
        expected = float(model(input_ids=samples[-2:], labels=samples[-2:], use_cache=False).loss)
    assert proxy.loss(dense) == expected

    seen = {}
    lin = find_blocks(model)[1][2].groups["gate_up"]["up_proj"]
    # a forward hook registered first runs before the proxy's, which puts the weights back
    hook = lin.register_forward_hook(lambda m, a, _o: seen.update(w=m.weight.detach().clone(), x=a[0].clone()))
    try:
        loss = proxy.loss(allocation.uniform(model, 0.5, 0.25))
    finally:
        hook.remove()
    # Wanda per row: half of every row's weights gone, the ones with the least |W_ij| ||x_j||
    assert ((seen["w"] == 0).sum(1) == lin.in_features // 2).all()
    assert (seen["x"] == 0).float().mean() == pytest.approx(0.25, abs=0.05)  # a quantile of other tokens
    scores, kept = proxy._scores(lin, "layers.2.gate_up"), seen["w"] != 0
    assert (scores.masked_fill(~kept, float("inf")).min(1).values >= scores.masked_fill(kept, 0).max(1).values).all()
    assert loss != expected
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # weights restored


def test_search_meets_the_budget_with_a_lower_proxy_loss_than_uniform(samples):
    model = model4()
    budget = Budget.of(model, context=32)
    speedup = budget.speedup(model, allocation.uniform(model, 0.5, 0.5))
    targets, record = allocation.search(model, samples, speedup, budget)
    assert budget.speedup(model, targets) >= speedup * (1 - 1e-9)
    assert len(set(targets.values())) > 1
    assert all(0 <= p <= allocation.MAX_SPARSITY for pair in targets.values() for p in pair)
    assert record["proxy_loss"] < record["proxy_loss_uniform"]
    assert record["evaluations"] <= allocation.MAX_EVALUATIONS
    # the record is what the targets score, measured afresh
    proxy = allocation._Proxy(model, samples[: allocation.STAT_SEQUENCES], samples[-allocation.LOSS_SEQUENCES :])
    assert proxy.loss(targets) == pytest.approx(record["proxy_loss"], rel=1e-6)
    assert proxy.loss(allocation.at_cost(model, record["shape"], speedup, budget)) == pytest.approx(
        record["proxy_loss"], rel=1e-6
    )


def test_prune_follows_per_group_targets(samples):
    model = model4()
    cfg = PruneConfig(nsamples=8, seqlen=32, batch_size=4, blocksize=16, allocation="search")
    result = prune_model(model, samples, cfg, progress=False)
    _, blocks = find_blocks(model)
    for block in blocks:
        for group, linears in block.groups.items():
            p_w, p_x = result.targets[f"layers.{block.index}.{group}"]
            for linear in linears.values():
                assert int((linear.weight == 0).sum()) == round(p_w * linear.weight.numel()), (block.index, group)
            if p_x > 0:
                assert result.calib_act_sparsity[f"layers.{block.index}.{group}"] == pytest.approx(p_x, abs=0.01)
    uniform = Budget.of(model, 32).speedup(model, allocation.uniform(model, 0.5, 0.5))
    assert result.estimated_decode_speedup >= uniform * (1 - 1e-9)
    assert result.to_json()["targets"]["layers.0.qkv"].keys() == {"weight_sparsity", "act_sparsity"}


def test_resume_prunes_to_the_saved_targets_without_searching_again(samples, tmp_path, monkeypatch):
    cfg = PruneConfig(nsamples=8, seqlen=32, batch_size=4, blocksize=16, allocation="search")
    expected = prune_model(model4(), samples, cfg, progress=False)
    real = pipeline._solve_group

    def crash(block, group, *args):
        if block.index == 2:
            raise RuntimeError("simulated crash")
        return real(block, group, *args)

    with monkeypatch.context() as m:
        m.setattr(pipeline, "_solve_group", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            prune_model(model4(), samples, cfg, progress=False, work_dir=tmp_path / "work")
    monkeypatch.setattr(allocation, "search", lambda *a, **k: pytest.fail("searched again on resume"))
    resumed = model4()
    result = prune_model(resumed, samples, cfg, progress=False, work_dir=tmp_path / "work")
    assert result.targets == expected.targets and result.allocation == expected.allocation
    assert result.thresholds == expected.thresholds


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(allocation="best"), "unknown allocation 'best': use one of uniform, search"),
        (dict(target_speedup=0.5), "must be a number above 1"),
        (dict(allocation="search", pattern="2:4"), "drop --pattern 2:4"),
    ],
)
def test_bad_allocation_settings_are_refused(settings, message):
    with pytest.raises(UsageError, match=message):
        PruneConfig(**settings).validate()


def test_search_refuses_out_of_core(tmp_path, text_file):
    import duogpt
    from conftest import byte_tokenizer

    src = tmp_path / "src"
    model4().save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    with pytest.raises(UsageError, match="--allocation search needs every block in memory: drop --offload"):
        duogpt.prune(
            str(src), calib=str(text_file), nsamples=4, seqlen=32, allocation="search", out=tmp_path / "o",
            offload=True, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "o").exists()
