"""Solvers against their references, the corrected-target identity, and exact patterns."""

from __future__ import annotations

import pytest
import torch

from duogpt.errors import UsageError
from duogpt.pruning import solvers
from duogpt.pruning.solvers import Pattern


def heavy_tailed_problem(k=64, m=1024, n=24, px=0.5, seed=0):
    """Inputs with outlier channels (like LLM activations), a dense and a sparsified stream."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.distributions.StudentT(2.0).sample((k, 1)).abs() + 0.1
    Xd = torch.randn(k, m, generator=gen, dtype=torch.float64) * scale.double()
    # the compressed stream: a drifted copy of the dense stream, magnitude-sparsified
    Xc = Xd + 0.3 * scale.double() * torch.randn(k, m, generator=gen, dtype=torch.float64)
    tau = Xc.abs().flatten().kthvalue(int(px * Xc.numel())).values
    Xs = Xc * (Xc.abs() > tau)
    W = torch.randn(n, k, generator=gen, dtype=torch.float64).float()
    return W, Xd, Xs


def stats(Xd, Xs):
    H = Xs @ Xs.T
    return H, (Xd - Xs) @ Xs.T


def objective(What, W, Xd, Xs) -> float:
    return float(((What.double() @ Xs - W.double() @ Xd) ** 2).sum())


PATTERNS = [Pattern(), Pattern(2, 4), Pattern(4, 8)]


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_obs_sweep_matches_reference(pattern):
    W, Xd, Xs = heavy_tailed_problem(k=40, m=400, n=10)
    H, _ = stats(Xd, Xs)
    fast = solvers.obs_sweep(W, H, 0.5, pattern, blocksize=16)
    slow = solvers.obs_sweep_reference(W, H, 0.5, pattern, blocksize=16)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
def test_sequential_correction_matches_reference(pattern):
    W, Xd, Xs = heavy_tailed_problem(k=40, m=400, n=10)
    H, G = stats(Xd, Xs)
    P = solvers.sequential_correction(H, G, 0.5, 0.01)
    fast = solvers.obs_sweep(W, H, 0.5, pattern, blocksize=16, P=P)
    slow = solvers.obs_sweep_reference(W, H, 0.5, pattern, blocksize=16, G=G, alpha=0.5)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_corrected_target_matches_reference():
    W, Xd, Xs = heavy_tailed_problem()
    H, G = stats(Xd, Xs)
    for alpha, ridge in [(1.0, 0.0), (0.25, 0.1)]:
        torch.testing.assert_close(
            solvers.corrected_target(W, H, G, alpha, ridge), solvers.corrected_target_reference(W, H, G, alpha, ridge)
        )


def test_corrected_target_identity():
    """||What Xs - W Xd||^2 = ||(What - Wt) Xs||^2 + const for every What."""
    W, Xd, Xs = heavy_tailed_problem(k=32, m=512, n=8)
    H, G = stats(Xd, Xs)
    Wt = solvers.corrected_target(W, H, G, alpha=1.0, ridge=0.0)
    gaps = []
    for seed in range(4):
        What = torch.randn(W.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        lhs = objective(What, W, Xd, Xs)
        rhs = float((((What - Wt) @ Xs) ** 2).sum())
        gaps.append(lhs - rhs)
    const = gaps[0]
    assert const >= 0
    for gap in gaps[1:]:
        assert gap == pytest.approx(const, rel=1e-8, abs=1e-6 * abs(const))
    # the constant is the unavoidable error of the best dense What
    assert const == pytest.approx(objective(Wt, W, Xd, Xs), rel=1e-8)


def test_duogpt_alpha_zero_is_sparsegpt_on_sparse_inputs():
    W, Xd, Xs = heavy_tailed_problem()
    H, G = stats(Xd, Xs)
    for correction in solvers.CORRECTIONS:
        torch.testing.assert_close(
            solvers.duogpt(W, H, G, 0.5, alpha=0.0, correction=correction), solvers.sparsegpt(W, H, 0.5)
        )


@pytest.mark.parametrize("seed", range(4))
def test_duogpt_objective_below_sparsegpt(seed):
    """At 50%/50% on heavy-tailed problems DuoGPT reconstructs the dense output better."""
    W, Xd, Xs = heavy_tailed_problem(k=128, m=2048, n=32, seed=seed)
    H, G = stats(Xd, Xs)
    sgpt_dense = objective(solvers.sparsegpt(W, Xd @ Xd.T, 0.5), W, Xd, Xs)
    sgpt_sparse = objective(solvers.sparsegpt(W, H, 0.5), W, Xd, Xs)
    duo_default = objective(solvers.duogpt(W, H, G, 0.5), W, Xd, Xs)
    duo_full = objective(solvers.duogpt(W, H, G, 0.5, alpha=1.0, ridge=0.0), W, Xd, Xs)
    duo_seq = objective(solvers.duogpt(W, H, G, 0.5, alpha=1.0, correction="sequential"), W, Xd, Xs)
    assert duo_default < min(sgpt_dense, sgpt_sparse)
    assert duo_full < duo_default  # on the calibration data itself, the full correction fits best
    assert duo_full < duo_seq < sgpt_sparse  # the sweep-time correction gains less than the target


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
@pytest.mark.parametrize("method", solvers.METHODS)
def test_exact_sparsity_and_patterns(method, pattern):
    W, Xd, Xs = heavy_tailed_problem(k=48, m=256, n=20)
    H, G = stats(Xd, Xs)
    p = 0.37 if not pattern.structured else 0.5
    if method == "magnitude":
        out = solvers.magnitude(W, p, pattern)
    elif method == "wanda":
        out = solvers.wanda(W, (Xs**2).sum(1), p, pattern)
    elif method == "sparsegpt":
        out = solvers.sparsegpt(W, H, p, pattern, blocksize=16)
    else:
        out = solvers.duogpt(W, H, G, p, pattern, blocksize=16)
    assert out.shape == W.shape and out.dtype == torch.float32
    zeros = out == 0
    if pattern.structured:
        groups = zeros.view(W.shape[0], -1, pattern.m).sum(-1)
        assert (groups == pattern.n).all()
    elif method == "wanda":
        assert (zeros.sum(1) == round(p * W.shape[1])).all()  # Wanda compares within each row
    else:
        assert int(zeros.sum()) == round(p * W.numel())


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_magnitude_and_wanda_match_references(pattern):
    W, Xd, Xs = heavy_tailed_problem(k=24, m=128, n=6)
    norms2 = (Xs**2).sum(1)
    torch.testing.assert_close(solvers.magnitude(W, 0.5, pattern), solvers.magnitude_reference(W, 0.5, pattern))
    torch.testing.assert_close(solvers.wanda(W, norms2, 0.5, pattern), solvers.wanda_reference(W, norms2, 0.5, pattern))


def test_dead_inputs_are_pruned_and_finite():
    W, Xd, Xs = heavy_tailed_problem(k=32, m=256, n=8)
    Xs[3] = 0
    Xd[3] = 0
    H, G = stats(Xd, Xs)
    out = solvers.duogpt(W, H, G, 0.5)
    assert torch.isfinite(out).all()
    assert (out[:, 3] == 0).all()


def test_zero_sparsity_keeps_weights_close():
    W, Xd, _ = heavy_tailed_problem(k=32, m=256, n=8)
    torch.testing.assert_close(solvers.sparsegpt(W, Xd @ Xd.T, 0.0), W)
    torch.testing.assert_close(solvers.magnitude(W, 0.0), W)


@pytest.mark.parametrize("text", ["3:2", "0:4", "a:b", "2-4", "unknown"])
def test_bad_patterns_are_refused(text):
    with pytest.raises(UsageError, match="pattern"):
        solvers.parse_pattern(text)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_sparsity_is_refused(p):
    W = torch.randn(4, 8)
    with pytest.raises(UsageError, match=r"outside \[0, 1\)"):
        solvers.magnitude(W, p)
