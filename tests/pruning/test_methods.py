"""The method table: what each method carries and collects, and that a new entry is all a method needs."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from duogpt.config import PruneConfig
from duogpt.pruning import methods, solvers
from duogpt.pruning.pipeline import prune_model, stream_names


@pytest.mark.parametrize(
    "method, hessian, act, streams",
    [
        ("duogpt", "sparse", 0.5, ["dense", "comp"]),
        ("duogpt", "dense", 0.5, ["dense", "comp"]),
        ("sparsegpt", "sparse", 0.5, ["calib", "comp"]),
        ("sparsegpt", "sparse", 0.0, ["comp"]),
        ("wanda", "sparse", 0.5, ["calib", "comp"]),
        ("magnitude", "sparse", 0.5, ["comp"]),
        ("magnitude", "sparse", 0.0, []),
    ],
)
def test_streams_follow_the_table(method, hessian, act, streams):
    assert stream_names(PruneConfig(method=method, hessian=hessian, act_sparsity=act)) == streams


def test_a_new_method_is_one_table_entry(monkeypatch, samples):
    """A toy method (prune by |W| * diag(H)) runs through the whole pipeline from its entry alone."""
    seen = []

    def solve(W, stats, cfg, pattern):
        seen.append(stats.H.shape)
        scores = W.abs().float() * stats.H.diagonal().float()[None, :]
        return W.masked_fill(solvers.mask_from_scores(scores, cfg.weight_sparsity, pattern), 0), {}

    entry = methods.Method("diag", "comp", False, frozenset({"H"}), solve)
    monkeypatch.setitem(methods.METHODS, "diag", entry)
    model = tiny_model()
    cfg = PruneConfig(method="diag", nsamples=8, seqlen=32, batch_size=4, act_sparsity=0.3)
    result = prune_model(model, samples, cfg, progress=False)
    assert len(seen) == 14 and all(r.rel_error is None for r in result.linears)
    assert all(abs(r.weight_sparsity - 0.5) < 1e-6 for r in result.linears)
    assert torch.isfinite(torch.tensor(list(result.thresholds.values()))).all()
