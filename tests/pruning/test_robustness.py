"""Numerical faults: indefinite Hessians, NaN/Inf in weights, activations or statistics, 16-bit models."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import tiny_llama_config, tiny_model
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.pruning import solvers, statistics
from duogpt.pruning.pipeline import prune_model


def _samples():
    return torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))


def _indefinite(k: int, shift: float) -> torch.Tensor:
    """A Gram matrix minus ``shift`` x its mean diagonal: indefinite until dampened past ``shift``."""
    X = torch.randn(k, 4 * k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    H = X @ X.T
    eig_min = torch.linalg.eigvalsh(H)[0]
    return H - (eig_min + shift * torch.diagonal(H).mean()) * torch.eye(k, dtype=torch.float64)


def test_dampening_rises_step_by_step_with_a_warning():
    H = _indefinite(16, 0.05)  # fails at 1%, works at 10%
    W = torch.randn(8, 16)
    with pytest.warns(solvers.DampeningWarning, match="used 10.00%"):
        out = solvers.sparsegpt(W, H, 0.5)
    assert torch.isfinite(out).all() and (out == 0).float().mean() == 0.5


def test_hopeless_hessian_fails_clearly():
    H = torch.tensor([[1.0, 50.0], [50.0, 1.0]], dtype=torch.float64)
    with pytest.raises(solvers.IllConditioned, match="not positive definite even with"):
        solvers.sparsegpt(torch.randn(4, 2), H, 0.5)
    with pytest.raises(solvers.IllConditioned, match="NaN/Inf"):
        solvers.sparsegpt(torch.randn(4, 2), torch.full((2, 2), float("nan")), 0.5)


def _patch_gram(monkeypatch, make):
    """The first group's H replaced by ``make(H)``."""
    real = statistics.Accumulator.finish
    calls = {"n": 0}

    def finish(self, out_norm2):
        calls["n"] += 1
        stats = real(self, out_norm2)
        if calls["n"] == 1:
            stats.H = make(stats.H)
        return stats

    monkeypatch.setattr(statistics.Accumulator, "finish", finish)


def test_pipeline_names_the_layer_whose_hessian_needed_more_dampening(monkeypatch, caplog):
    _patch_gram(
        monkeypatch, lambda H: H - (torch.linalg.eigvalsh(H)[0] + 0.05 * H.diagonal().mean()) * torch.eye(len(H))
    )
    with caplog.at_level(logging.WARNING, logger="duogpt"):
        prune_model(tiny_model(), _samples(), PruneConfig(method="sparsegpt", act_sparsity=0.0), progress=False)
    assert "layers.0.self_attn.q_proj: Hessian not positive definite with 1.00% dampening; used 10.00%" in caplog.text


def test_pipeline_stops_with_the_layer_name_on_a_hopeless_hessian(monkeypatch):
    _patch_gram(monkeypatch, lambda H: H + 100 * H.diagonal().mean() * (1 - torch.eye(len(H))))
    with pytest.raises(UsageError, match=r"^layers\.0\.self_attn\.q_proj: the Hessian is not positive definite"):
        prune_model(tiny_model(), _samples(), PruneConfig(method="duogpt"), progress=False)


def test_nan_weights_stop_with_the_layer_name():
    model = tiny_model()
    model.model.layers[1].mlp.up_proj.weight.data[3, 5] = float("nan")
    with pytest.raises(UsageError, match=r"^layers\.1\.mlp\.up_proj: the weights contain NaN/Inf"):
        prune_model(model, _samples(), PruneConfig(method="wanda", act_sparsity=0.0), progress=False)


@pytest.mark.parametrize("method", ["duogpt", "sparsegpt", "wanda"])
def test_overflowing_activations_stop_with_the_layer_name(method):
    model = tiny_model()
    model.model.layers[0].input_layernorm.weight.data[0] = float("inf")
    with pytest.raises(UsageError, match=r"^layers\.0\.self_attn\.q_proj: .*NaN/Inf"):
        prune_model(model, _samples(), PruneConfig(method=method), progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_models_prune_with_wide_statistics(dtype):
    config = tiny_llama_config()
    half = tiny_model(config).to(dtype)
    full = tiny_model(config)
    cfg = PruneConfig(method="duogpt", weight_sparsity=0.5, act_sparsity=0.3)
    prune_model(half, _samples(), cfg, progress=False)
    prune_model(full, _samples(), cfg, progress=False)
    for (name, a), (_, b) in zip(half.named_parameters(), full.named_parameters(), strict=True):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        if name.endswith("proj.weight"):
            assert (a == 0).float().mean() == pytest.approx(0.5, abs=1e-3)
            # same problem in 16 bits: the masks agree almost everywhere
            assert ((a == 0) == (b == 0)).float().mean() > 0.9, name
