"""Activation sparsifiers: threshold calibration, semantics, installation and counters."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from duogpt.errors import UsageError
from duogpt.models import GROUPS
from duogpt.pruning import sparsify


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_threshold_hits_target_on_calibration_data(p):
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(64, 96, generator=gen) * torch.rand(96, generator=gen) for _ in range(3)]
    tau = sparsify.calibrate_threshold(chunks, p)
    zeroed = sum(int((sparsify.sparsify(c, tau) == 0).sum()) for c in chunks) / sum(c.numel() for c in chunks)
    assert abs(zeroed - p) < 0.01


def test_threshold_on_large_input_uses_sample_within_one_percent(monkeypatch):
    monkeypatch.setattr(sparsify, "MAX_QUANTILE_SAMPLES", 10_000)
    x = torch.randn(200, 1000, generator=torch.Generator().manual_seed(0))
    tau = sparsify.calibrate_threshold([x], 0.5)
    assert abs(float((sparsify.sparsify(x, tau) == 0).float().mean()) - 0.5) < 0.01


def test_zero_target_means_no_sparsity():
    x = torch.randn(10, 10)
    assert sparsify.calibrate_threshold([x], 0.0) == 0.0
    assert torch.equal(sparsify.sparsify(x, 0.0), x)


@pytest.mark.parametrize("p", [-0.01, 1.0, 2.0])
def test_bad_activation_sparsity_is_refused(p):
    with pytest.raises(UsageError, match="activation sparsity"):
        sparsify.calibrate_threshold([torch.randn(4)], p)


def test_install_applies_to_group_and_counts(tiny_llama):
    ids = torch.randint(0, 256, (2, 16))
    dense = tiny_llama(input_ids=ids).logits
    names = [f"layers.{i}.{g}" for i in range(2) for g in ("qkv", "o", "gate_up", "down")]
    reg = sparsify.install(tiny_llama, {n: 1e9 for n in names})  # zero every activation
    sparsify.reset_counters(tiny_llama)  # counting is on only while measuring
    sparse = tiny_llama(input_ids=ids).logits
    assert not torch.allclose(dense, sparse)
    overall, per_layer = sparsify.measured_sparsity(tiny_llama)
    assert overall == 1.0 and set(per_layer) == set(names)
    # q/k/v share one input: counted once per forward
    assert reg["layers.0.qkv"].total == ids.numel() * tiny_llama.config.hidden_size
    sparsify.uninstall(tiny_llama)
    torch.testing.assert_close(tiny_llama(input_ids=ids).logits, dense)


def test_dense_prefill_switch(tiny_llama):
    ids = torch.randint(0, 256, (1, 16))
    dense = tiny_llama(input_ids=ids).logits
    sparsify.install(tiny_llama, {"layers.0.down": 1e9}, sparsify_prefill=False)
    sparsify.reset_counters(tiny_llama)
    torch.testing.assert_close(tiny_llama(input_ids=ids).logits, dense)  # prefill untouched
    one = tiny_llama(input_ids=ids[:, :1]).logits  # a single token is decode: sparsified
    assert sparsify.measured_sparsity(tiny_llama)[0] == 1.0
    assert one.shape[1] == 1


def test_install_rejects_unknown_names(tiny_llama):
    with pytest.raises(UsageError, match="does not match the model"):
        sparsify.install(tiny_llama, {"layers.7.qkv": 0.1})


def test_sparsifiers_hold_no_activation_after_a_forward_pass(samples, monkeypatch):
    """q/k/v (gate/up) still share one sparsified input, and it is dropped once the group's last linear has it."""
    model = tiny_model()
    registry = sparsify.install(model, {f"layers.{i}.{g}": 0.1 for i in range(2) for g in GROUPS})
    calls = []
    real = sparsify.sparsify
    monkeypatch.setattr(sparsify, "sparsify", lambda x, t: calls.append(1) or real(x, t))
    with torch.no_grad():
        model(input_ids=samples)
    assert len(calls) == 2 * 4 * 1  # one sparsification per group and block, not one per linear
    assert all(sp._last is None for sp in registry.values())


@pytest.mark.parametrize("entries", [600, 3 * sparsify.MAX_QUANTILE_SAMPLES // 2])
def test_threshold_sample_split_between_processes_sees_what_one_process_sees(entries):
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(entries // 3, generator=gen) for _ in range(3)]
    sizes = [c.numel() for c in chunks]
    one = sparsify.ThresholdSample(sizes, seed=5)
    for i, c in enumerate(chunks):
        one.add(i, c)
    ranks = [sparsify.ThresholdSample(sizes, seed=5) for _ in range(2)]
    for i, c in enumerate(chunks):  # dealt round-robin, as the ranks deal calibration batches
        ranks[i % 2].add(i, c)
    summed = ranks[0].values + ranks[1].values
    tau = one.threshold(0.5)
    assert tau == ranks[0].threshold(0.5, reduce=lambda _: summed)
    assert tau == sparsify.calibrate_threshold(chunks, 0.5, seed=5)
    with pytest.raises(ValueError, match="entries"):
        one.add(0, torch.zeros(3))
