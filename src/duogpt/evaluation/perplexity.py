"""Perplexity with the model's sparsifiers active, and what it cost to measure."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from duogpt.models import find_blocks
from duogpt.pruning import sparsify


@dataclass
class EvalResult:
    perplexity: float
    tokens: int
    weight_sparsity: float
    activation_sparsity: float | None
    wall_seconds: float
    peak_rss_mb: float
    per_layer_activation_sparsity: dict[str, float | None]
    half_perplexities: tuple[float, float]

    def to_json(self) -> dict:
        return dict(self.__dict__, half_perplexities=list(self.half_perplexities))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def weight_sparsity(model: torch.nn.Module) -> float:
    """Fraction of zeros over the prunable linears of the decoder blocks."""
    _, blocks = find_blocks(model)
    zeros = total = 0
    for block in blocks:
        for linear in block.linears().values():
            zeros += int((linear.weight == 0).sum())
            total += linear.weight.numel()
    return zeros / total


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = True) -> EvalResult:
    """Perplexity over ``windows`` (n, seqlen): every token after the first of each window is scored."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    sparsify.reset_counters(model)
    nll = torch.zeros(windows.shape[0], dtype=torch.float64)
    for i in tqdm(range(0, windows.shape[0], batch_size), desc="eval", disable=not progress):
        ids = windows[i : i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        nll[i : i + ids.shape[0]] = losses.double().sum(1).cpu()
    per_window = windows.shape[1] - 1
    tokens = per_window * windows.shape[0]
    half = max(1, windows.shape[0] // 2)
    halves = (nll[:half], nll[half:]) if windows.shape[0] > 1 else (nll, nll)
    overall, per_layer = sparsify.measured_sparsity(model)
    sparsify.reset_counters(model)
    return EvalResult(
        perplexity=math.exp(float(nll.sum()) / tokens),
        tokens=tokens,
        weight_sparsity=weight_sparsity(model),
        activation_sparsity=overall,
        wall_seconds=time.perf_counter() - start,
        peak_rss_mb=peak_rss_mb(),
        per_layer_activation_sparsity=per_layer,
        half_perplexities=tuple(math.exp(float(h.sum()) / (per_window * len(h))) for h in halves),
    )
