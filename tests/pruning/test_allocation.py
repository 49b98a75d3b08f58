"""Per-layer targets: the byte budget, uniform targets for a speedup, the greedy allocation, and the
prune that follows them."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama_config, tiny_model
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.models import find_blocks
from duogpt.pruning import allocation
from duogpt.pruning.allocation import Budget, _BlockProbe, _Point
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


def test_combine_takes_the_cheapest_error_per_byte_and_looks_past_a_costly_step():
    a = [_Point(100, 0.0, {}), _Point(90, 1.0, {}), _Point(50, 1.1, {})]  # a costly step, then a cheap one
    b = [_Point(100, 0.0, {}), _Point(80, 0.5, {}), _Point(60, 2.0, {})]
    assert allocation.combine([a, b], budget_bytes=160, fixed=10) == [2, 0]  # a's slope to 50: 1.1 / 50
    assert allocation.combine([a, b], budget_bytes=210, fixed=10) == [0, 0]  # already within budget
    assert allocation.combine([a, b], budget_bytes=145, fixed=10) == [2, 1]
    assert allocation.combine([a, b], budget_bytes=125, fixed=10) == [2, 2]


def test_greedy_meets_the_budget_with_less_block_error_than_uniform(samples):
    model = model4()
    budget = Budget.of(model, context=32)
    uniform = allocation.uniform(model, 0.5, 0.5)
    speedup = budget.speedup(model, uniform)
    targets = allocation.greedy(model, samples, speedup, budget)
    assert budget.speedup(model, targets) >= speedup * (1 - 1e-9)
    assert len(set(targets.values())) > 1
    assert all(0 <= p <= allocation.MAX_SPARSITY for pair in targets.values() for p in pair)

    # the objective the greedy minimises, summed block by block on the same dense inputs
    def summed_error(t):
        from duogpt.pruning.statistics import capture_inputs

        _, blocks = find_blocks(model)
        hidden, kwargs = capture_inputs(model, [samples[: allocation.PROXY_SEQUENCES]])
        h, total = hidden[0], 0.0
        for block in blocks:
            probe = _BlockProbe(block, h, kwargs[block.index][0])
            total += probe.error({g: t[f"layers.{block.index}.{g}"] for g in block.groups})
            h = probe.target
        return total

    with torch.no_grad():
        assert summed_error(targets) < summed_error(uniform)


def test_prune_follows_per_group_targets(samples):
    model = model4()
    cfg = PruneConfig(nsamples=8, seqlen=32, batch_size=4, blocksize=16, allocation="greedy")
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


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(allocation="best"), "unknown allocation 'best': use one of uniform, greedy"),
        (dict(target_speedup=0.5), "must be a number above 1"),
        (dict(allocation="greedy", pattern="2:4"), "drop --pattern 2:4"),
    ],
)
def test_bad_allocation_settings_are_refused(settings, message):
    with pytest.raises(UsageError, match=message):
        PruneConfig(**settings).validate()


def test_greedy_refuses_out_of_core(tmp_path, text_file):
    import duogpt
    from conftest import byte_tokenizer

    src = tmp_path / "src"
    model4().save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    with pytest.raises(UsageError, match="--allocation greedy needs every block in memory: drop --offload"):
        duogpt.prune(
            str(src), calib=str(text_file), nsamples=4, seqlen=32, allocation="greedy", out=tmp_path / "o",
            offload=True, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "o").exists()
