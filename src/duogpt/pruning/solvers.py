"""Weight-pruning solvers: pure functions from (weights, statistics, settings) to pruned weights.

Weights are ``W`` of shape (n_out, k_in); statistics are over calibration inputs ``X``
(k_in x m tokens): ``H = X X^T``, ``G = (Xd - Xs) Xs^T``, ``norms2 = ||X_j||^2``.
Each fast solver has a slow, obvious ``*_reference`` beside it (tests hold them together).
See ``docs/method.md`` for the derivations:

    || What Xs - W Xd ||^2 = || (What - Wt) Xs ||^2 + const,   Wt = W (I + G H^-1)

so DuoGPT is the OBS/SparseGPT sweep with the sparse-input Hessian and a corrected target.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import pairwise

import torch

from duogpt import checks
from duogpt.errors import UsageError

METHODS = ("duogpt", "sparsegpt", "wanda", "magnitude")
CORRECTIONS = ("target", "sequential", "none")


@dataclass(frozen=True)
class Pattern:
    """Sparsity pattern: unstructured (n = m = 0) or n zeros in every m consecutive inputs."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"


def parse_pattern(text: str | None) -> Pattern:
    """'unstructured', '2:4', '4:8', ... (n zeros kept out of every m weights in a row)."""
    if text is None or text == "unstructured":
        return Pattern()
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError:
        raise UsageError(f"unknown pattern {text!r}: use 'unstructured' or N:M such as 2:4 or 4:8") from None
    if not 0 < n < m:
        raise UsageError(f"pattern {text!r} needs 0 < N < M: use e.g. 2:4 or 4:8")
    return Pattern(n, m)


# --------------------------------------------------------------------------- masks


def mask_from_scores(scores: torch.Tensor, sparsity: float, pattern: Pattern = Pattern(), per_row: bool = False):
    """Boolean mask (True = prune) of the lowest scores.

    Unstructured: exactly ``round(sparsity * numel)`` entries (per row when ``per_row``,
    with ``round(sparsity * k)`` each). N:M: the ``n`` lowest of every ``m`` consecutive
    entries in a row (a trailing partial group keeps the same ratio, rounded down).
    """
    checks.fraction("weight sparsity", sparsity)
    rows, cols = scores.shape
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if pattern.structured:
        for start in range(0, cols, pattern.m):
            block = scores[:, start : start + pattern.m]
            count = pattern.n * block.shape[1] // pattern.m
            if count:
                idx = torch.topk(block, count, dim=1, largest=False).indices
                mask[:, start : start + pattern.m].scatter_(1, idx, True)
        return mask
    if per_row:
        count = round(sparsity * cols)
        if count:
            mask.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, True)
        return mask
    count = round(sparsity * scores.numel())
    if count:
        flat = mask.view(-1)
        flat[torch.topk(scores.reshape(-1), count, largest=False).indices] = True
    return mask


def magnitude(W: torch.Tensor, sparsity: float, pattern: Pattern = Pattern()) -> torch.Tensor:
    """Zero the smallest |W| over the whole matrix (N:M: within each row group)."""
    mask = mask_from_scores(W.abs().float(), sparsity, pattern)
    return W.masked_fill(mask, 0)


def wanda(W: torch.Tensor, norms2: torch.Tensor, sparsity: float, pattern: Pattern = Pattern()) -> torch.Tensor:
    """Wanda: score |W_ij| * ||X_j||, compared within each output row."""
    scores = W.abs().float() * norms2.float().clamp_min(0).sqrt()[None, :]
    mask = mask_from_scores(scores, sparsity, pattern, per_row=True)
    return W.masked_fill(mask, 0)


def magnitude_reference(W: torch.Tensor, sparsity: float, pattern: Pattern = Pattern()) -> torch.Tensor:
    """Slow magnitude pruning: sort every |W| (or each N:M group) and zero the smallest."""
    out = W.clone()
    if pattern.structured:
        for r in range(W.shape[0]):
            for start in range(0, W.shape[1], pattern.m):
                group = list(range(start, min(start + pattern.m, W.shape[1])))
                count = pattern.n * len(group) // pattern.m
                for c in sorted(group, key=lambda c: float(W[r, c].abs()))[:count]:
                    out[r, c] = 0
        return out
    order = sorted(range(W.numel()), key=lambda i: float(W.reshape(-1)[i].abs()))
    out.view(-1)[order[: round(sparsity * W.numel())]] = 0
    return out


def wanda_reference(W: torch.Tensor, norms2: torch.Tensor, sparsity: float, pattern: Pattern = Pattern()):
    """Slow Wanda: per row, sort |W_ij| * ||X_j|| and zero the smallest (or within N:M groups)."""
    out = W.clone()
    norms = norms2.double().sqrt()
    for r in range(W.shape[0]):

        def score(c: int, r: int = r) -> float:
            return float(W[r, c].abs().double() * norms[c])

        if pattern.structured:
            for start in range(0, W.shape[1], pattern.m):
                group = list(range(start, min(start + pattern.m, W.shape[1])))
                for c in sorted(group, key=score)[: pattern.n * len(group) // pattern.m]:
                    out[r, c] = 0
        else:
            for c in sorted(range(W.shape[1]), key=score)[: round(sparsity * W.shape[1])]:
                out[r, c] = 0
    return out


# --------------------------------------------------------------------------- OBS sweep


def all_finite(t: torch.Tensor, rows: int = 1024) -> bool:
    """No NaN/Inf in ``t``, checked ``rows`` rows at a time (``isfinite`` of a whole 11008^2
    float64 matrix holds about 1.3 GB of temporaries)."""
    t = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
    return all(bool(torch.isfinite(t[r : r + rows]).all()) for r in range(0, t.shape[0], rows))


def damped_diagonal(diag: torch.Tensor, percdamp: float) -> torch.Tensor:
    """The diagonal of dampened H from H's diagonal: dead inputs (zero) set to 1, then
    ``percdamp * mean`` added to every entry (float64)."""
    diag = diag.double().clone()
    diag[diag <= 0] = 1.0
    mean = diag.mean() if diag.numel() else diag.new_tensor(1.0)
    return diag + percdamp * mean


def dampen(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 copy of H with dead inputs made harmless and ``percdamp * mean(diag)`` added.

    Returns (H_damped, dead) where ``dead`` marks inputs that never fired (zero diagonal;
    their rows and columns of a Gram matrix are zero, so only the diagonal changes).
    """
    H = H.double().clone()
    dead = torch.diagonal(H) <= 0
    torch.diagonal(H).copy_(damped_diagonal(torch.diagonal(H), percdamp))
    return H, dead


class DampeningWarning(UserWarning):
    """The requested dampening left H indefinite; a larger one was used."""


class IllConditioned(ArithmeticError):
    """H stayed indefinite (or non-finite) at the largest dampening tried."""


def damping_steps(percdamp: float) -> list[float]:
    """The requested dampening, then 10x, 100x and 1000x of it (of 1% if none was requested)."""
    base = percdamp if percdamp > 0 else 0.01
    return [percdamp, *(base * 10**i for i in range(1, 4))]


def factor_with_dampening(H: torch.Tensor, percdamp: float, factor) -> tuple[torch.Tensor, torch.Tensor]:
    """``factor(dampen(H, d))`` for the first dampening ``d`` of ``damping_steps`` that succeeds.

    ``factor`` returns (result, ok) and must not write to its argument. A float64 ``H`` is
    dampened in place (only its diagonal changes) and its diagonal restored exactly before
    returning, so no k x k copy is made (about 1 GB at k = 11008); other dtypes are copied.
    Returns (result, dead inputs); warns (DampeningWarning) when more than the requested
    dampening was needed, raises IllConditioned when none helps.
    """
    if not all_finite(H):
        raise IllConditioned("the Hessian has NaN/Inf entries (the inputs overflowed)")
    H = H if H.dtype == torch.float64 else H.double()
    diag = torch.diagonal(H)
    saved = diag.clone()
    dead = saved <= 0
    try:
        for damp in damping_steps(percdamp):
            diag.copy_(damped_diagonal(saved, damp))
            result, ok = factor(H)
            if ok:
                if damp != percdamp:
                    warnings.warn(
                        f"Hessian not positive definite with {percdamp:.2%} dampening; used {damp:.2%}",
                        DampeningWarning,
                        stacklevel=3,
                    )
                return result, dead
            del result
    finally:
        diag.copy_(saved)
    raise IllConditioned(f"the Hessian is not positive definite even with {damp:.0%} dampening")


def _inverse_cholesky_upper(H: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), and whether both factorisations worked.

    The chain L -> H^-1 -> U runs in one k x k buffer (LAPACK works in place).
    """
    L, info = torch.linalg.cholesky_ex(H)
    if info != 0:
        return L, False
    work = torch.cholesky_inverse(L, out=L)
    U, info = torch.linalg.cholesky_ex(work, upper=True, out=(work, torch.empty((), dtype=torch.int32)))
    return U, bool(info == 0 and all_finite(U))


def _cholesky(H: torch.Tensor) -> tuple[torch.Tensor, bool]:
    L, info = torch.linalg.cholesky_ex(H)
    return L, bool(info == 0)


def _block_counts(n_rows: int, cols: int, blocksize: int, sparsity: float) -> list[int]:
    """Pruned count per column block so that the whole matrix gets round(sparsity * numel)."""
    edges = list(range(0, cols, blocksize)) + [cols]
    return [round(sparsity * n_rows * b) - round(sparsity * n_rows * a) for a, b in pairwise(edges)]


def obs_sweep(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    pattern: Pattern = Pattern(),
    blocksize: int = 128,
    percdamp: float = 0.01,
    P: torch.Tensor | None = None,
) -> torch.Tensor:
    """SparseGPT's column sweep: prune W towards itself under Hessian H (fast path).

    Cholesky of H^-1 once, lazy updates between ``blocksize``-column blocks, the mask of
    each block chosen adaptively at its start (N:M: every m columns). ``P`` (optional,
    k x k, strictly upper-triangular rows) adds ``w_i (x) P[i, i+1:]`` at every step
    (the sequential residual correction). Returns float32 weights with exact sparsity.
    """
    checks.fraction("weight sparsity", sparsity)
    n_rows, cols = W.shape
    U, dead = factor_with_dampening(H, percdamp, _inverse_cholesky_upper)
    U = U.float()
    W = W.float().clone()  # the sweep runs in float32; the factorisation in float64
    W[:, dead] = 0
    P = None if P is None else P.float()
    counts = _block_counts(n_rows, cols, blocksize, sparsity)
    for b, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = torch.diagonal(U1)
        errs = torch.zeros_like(W1)
        kept = torch.zeros_like(W1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if not pattern.structured and counts[b]:
            scores = (W1**2 / d[None, :] ** 2).reshape(-1)
            mask1.view(-1)[torch.topk(scores, counts[b], largest=False).indices] = True
        for i in range(i2 - i1):
            if pattern.structured and (i1 + i) % pattern.m == 0:
                width = min(pattern.m, i2 - i1 - i)
                count = pattern.n * width // pattern.m
                if count:
                    scores = W1[:, i : i + width] ** 2 / d[None, i : i + width] ** 2
                    idx = torch.topk(scores, count, dim=1, largest=False).indices
                    mask1[:, i : i + width].scatter_(1, idx, True)
            w = W1[:, i].clone()
            q = w.masked_fill(mask1[:, i], 0)
            err = (w - q) / d[i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            if P is not None:
                W1[:, i + 1 :] += w[:, None] * P[i1 + i, i1 + i + 1 : i2][None, :]
                kept[:, i] = w
            W1[:, i] = q
            errs[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= errs @ U[i1:i2, i2:]
        if P is not None:
            W[:, i2:] += kept @ P[i1:i2, i2:]
    return W


def obs_sweep_reference(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    pattern: Pattern = Pattern(),
    blocksize: int = 128,
    percdamp: float = 0.01,
    G: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Slow, obvious OBS sweep: explicit inverse of the remaining Hessian at every column.

    At column j the remaining inputs are j..k-1 with inverse Hessian ``Hinv = inv(H[j:, j:])``;
    pruning ``w_j -> q_j`` moves the remaining weights by ``-(w_j - q_j) / Hinv[0, 0] * Hinv[0, :]``
    (and, with ``G``, adds ``alpha * w_j * G[j, j+1:] inv(H[j+1:, j+1:])``: the least-squares
    response of the later inputs to column j's share of the residual).
    """
    checks.fraction("weight sparsity", sparsity)
    n_rows, cols = W.shape
    Hd, dead = dampen(H, percdamp)
    W = W.double().clone()
    W[:, dead] = 0
    counts = _block_counts(n_rows, cols, blocksize, sparsity)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for j in range(cols):
        if j % blocksize == 0 and not pattern.structured:
            i2 = min(j + blocksize, cols)
            d = torch.stack([torch.linalg.inv(Hd[c:, c:])[0, 0] for c in range(j, i2)])
            scores = (W[:, j:i2] ** 2 / d[None, :]).reshape(-1)
            b = j // blocksize
            if counts[b]:
                flat = torch.zeros(scores.numel(), dtype=torch.bool)
                flat[torch.topk(scores, counts[b], largest=False).indices] = True
                mask[:, j:i2] = flat.view(n_rows, i2 - j)
        if pattern.structured and j % pattern.m == 0:
            width = min(pattern.m, cols - j, blocksize - j % blocksize)
            count = pattern.n * width // pattern.m
            if count:
                d = torch.stack([torch.linalg.inv(Hd[c:, c:])[0, 0] for c in range(j, j + width)])
                scores = W[:, j : j + width] ** 2 / d[None, :]
                idx = torch.topk(scores, count, dim=1, largest=False).indices
                mask[:, j : j + width].scatter_(1, idx, True)
        Hinv = torch.linalg.inv(Hd[j:, j:])
        w = W[:, j].clone()
        q = w.masked_fill(mask[:, j], 0)
        W[:, j:] -= ((w - q) / Hinv[0, 0])[:, None] * Hinv[0][None, :]
        if G is not None and alpha and j + 1 < cols:
            response = torch.linalg.solve(Hd[j + 1 :, j + 1 :], G.double()[j, j + 1 :])
            W[:, j + 1 :] += alpha * w[:, None] * response[None, :]
        W[:, j] = q
    return W.float()


# --------------------------------------------------------------------------- methods


def sparsegpt(W, H, sparsity, pattern=Pattern(), blocksize=128, percdamp=0.01) -> torch.Tensor:
    """SparseGPT: the OBS sweep of W under the Hessian of its own (one-stream) inputs."""
    return obs_sweep(W, H, sparsity, pattern, blocksize, percdamp)


def corrected_target(
    W: torch.Tensor, H: torch.Tensor, G: torch.Tensor, alpha: float, ridge: float, rows: int = 1024
) -> torch.Tensor:
    """``Wt = W + alpha (W G)(H + ridge * mean(diag H) I)^-1`` (float64).

    With alpha = 1 and ridge = 0 this is the least-squares target ``W Xd Xs^T H^-1``. Rows are
    independent, so they are solved ``rows`` at a time against one Cholesky factor: besides
    the factor and the result only (rows x k) temporaries are held.
    """
    if alpha == 0:
        return W.double()
    L, _ = factor_with_dampening(H, ridge, _cholesky)
    out = torch.empty(W.shape, dtype=torch.float64)
    for r in range(0, W.shape[0], rows):
        w = W[r : r + rows].double()
        # x Hr = w G with Hr = L L^T: two triangular solves from the right (cholesky_solve
        # would copy L, another k x k float64 matrix)
        z = torch.linalg.solve_triangular(L.T, w @ G, upper=True, left=False)
        out[r : r + rows] = w + alpha * torch.linalg.solve_triangular(L, z, upper=False, left=False)
    return out


def corrected_target_reference(W, H, G, alpha, ridge) -> torch.Tensor:
    """Same target through an explicit inverse."""
    Hr, _ = dampen(H, ridge)
    return W.double() + alpha * (W.double() @ G.double()) @ torch.linalg.inv(Hr)


def sequential_correction(H: torch.Tensor, G: torch.Tensor, alpha: float, percdamp: float) -> torch.Tensor:
    """GPTAQ-style correction matrix ``P = alpha * triu(G U^T, 1) U`` with ``H^-1 = U^T U``.

    Row j of P is ``alpha * G[j, j+1:] inv(H[j+1:, j+1:])`` (zero up to column j).
    """
    U, _ = factor_with_dampening(H, percdamp, _inverse_cholesky_upper)
    return alpha * torch.triu(G.double() @ U.T, diagonal=1) @ U


def duogpt(
    W: torch.Tensor,
    H: torch.Tensor,
    G: torch.Tensor,
    sparsity: float,
    pattern: Pattern = Pattern(),
    alpha: float = 0.25,
    ridge: float = 0.1,
    correction: str = "target",
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """DuoGPT: prune so that ``What Xs`` matches the dense output ``W Xd``.

    ``H`` comes from the sparse compressed-stream inputs ``Xs``, ``G = (Xd - Xs) Xs^T``.
    ``correction``: 'target' (the corrected target, default), 'sequential' (GPTAQ-style
    correction inside the sweep) or 'none' (SparseGPT on the sparse inputs).
    """
    if correction not in CORRECTIONS:
        raise UsageError(f"unknown correction {correction!r}: use one of {', '.join(CORRECTIONS)}")
    if correction == "target":
        return obs_sweep(corrected_target(W, H, G, alpha, ridge), H, sparsity, pattern, blocksize, percdamp)
    if correction == "sequential" and alpha:
        P = sequential_correction(H, G, alpha, percdamp)
        return obs_sweep(W, H, sparsity, pattern, blocksize, percdamp, P=P)
    return obs_sweep(W, H, sparsity, pattern, blocksize, percdamp)
