"""Pruning methods as data: what each needs from calibration and how it solves a linear.

A :class:`Method` says which stream's group inputs its statistics come from, whether it
also carries the dense model's stream (DuoGPT's target ``W Xd``), which statistics it
collects, its solver and its error measure. The pipeline reads nothing else about a method,
so a new method, or an ablation variant of one, is one entry here.

Streams (per chunk, the hidden states entering the current block):

- ``comp``: the compressed model as it will run (pruned blocks, sparsifiers on); every
  method's thresholds are calibrated on it.
- ``dense``: the original model (``Xd``).
- ``calib``: the pruned model without sparsifiers, the stream SparseGPT and Wanda fit their
  weights to when there is activation sparsity (with p_x = 0 it is ``comp``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from duogpt.errors import UsageError
from duogpt.pruning import solvers
from duogpt.pruning.statistics import output_error

HESSIANS = ("sparse", "dense")


@dataclass(frozen=True)
class Method:
    name: str
    fit_stream: str | None  # 'comp', 'calib' or None: whose group inputs the statistics come from
    dense_target: bool  # carry the dense model's stream (cross terms with Xd, ||W Xd||)
    statistics: frozenset[str]  # of Statistics' fields: H, G, dense_H, norms2
    solve: Callable  # (W, Statistics, cfg, Pattern) -> (pruned W, {setting: value chosen for this linear})
    error: Callable | None = None  # (W, What, Statistics, linear name) -> relative output error

    def streams(self, act_sparsity: float) -> list[str]:
        """The streams a prune with this method carries between blocks."""
        names = ["dense"] if self.dense_target else []
        if self.fit_stream == "calib" and act_sparsity > 0:
            names.append("calib")
        if self.fit_stream is not None or act_sparsity > 0:
            names.append("comp")
        return names


def _magnitude(W, stats, cfg, pattern):
    return solvers.magnitude(W.float(), cfg.weight_sparsity, pattern), {}


def _wanda(W, stats, cfg, pattern):
    if not solvers.all_finite(stats.norms2):
        raise solvers.IllConditioned("the input norms have NaN/Inf entries (the inputs overflowed)")
    return solvers.wanda(W.float(), stats.norms2, cfg.weight_sparsity, pattern), {}


def _sparsegpt(W, stats, cfg, pattern):
    return solvers.sparsegpt(W, stats.H, cfg.weight_sparsity, pattern, cfg.blocksize, cfg.percdamp), {}


def _duogpt(W, stats, cfg, pattern):
    if not solvers.all_finite(stats.G):
        raise solvers.IllConditioned("the correction statistics G have NaN/Inf entries (the inputs overflowed)")
    alpha, ridge = cfg.alpha, cfg.ridge
    if alpha == "auto":  # the pipeline solves each candidate with a number (pruning/alpha_choice.py)
        raise UsageError("--alpha auto is chosen by the pipeline (prune_model with held-out windows), not per linear")
    new = solvers.duogpt(
        W, stats.H, stats.G, cfg.weight_sparsity, pattern, alpha, ridge, cfg.correction, cfg.blocksize, cfg.percdamp
    )
    return new, {"alpha": alpha, "ridge": ridge}


def _duogpt_dense_hessian(W, stats, cfg, pattern):
    """Ablation: min ||(W - What) Xd||, blind to the sparsified inputs (no correction)."""
    return solvers.sparsegpt(W, stats.dense_H, cfg.weight_sparsity, pattern, cfg.blocksize, cfg.percdamp), {}


def _one_stream_error(W, What, stats, _name):
    return output_error(W, What, stats.H)


def _two_stream_error(W, What, stats, name):
    return output_error(W, What, stats.H, stats.G, stats.out_norm2[name])


_TWO_STREAM = frozenset({"H", "G"})
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("duogpt", "comp", True, _TWO_STREAM, _duogpt, _two_stream_error),
        Method("sparsegpt", "calib", False, frozenset({"H"}), _sparsegpt, _one_stream_error),
        Method("wanda", "calib", False, frozenset({"norms2"}), _wanda),
        Method("magnitude", None, False, frozenset(), _magnitude),
    ]
}
# variants selected by a setting other than the method ('hessian'): (method, hessian) -> entry
ABLATIONS: dict[tuple[str, str], Method] = {
    ("duogpt", "dense"): Method(
        "duogpt", "comp", True, _TWO_STREAM | {"dense_H"}, _duogpt_dense_hessian, _two_stream_error
    ),
}


def method_for(method: str, hessian: str = "sparse") -> Method:
    """The table entry for a method name and Hessian choice; refuses combinations that do not exist."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if hessian == "sparse":
        return METHODS[method]
    if (method, hessian) not in ABLATIONS:
        have = ", ".join(f"{m} (hessian={h})" for m, h in ABLATIONS)
        raise UsageError(f"hessian={hessian!r} is not available for {method}: it exists for {have}")
    return ABLATIONS[(method, hessian)]
