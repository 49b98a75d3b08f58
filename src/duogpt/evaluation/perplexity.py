"""Perplexity with the model's sparsifiers active, and what it cost to measure."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from duogpt.memory import peak_rss_mb
from duogpt.models import find_blocks
from duogpt.pruning import sparsify
from duogpt.runtime.linear import weight_facts


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
    per_layer_weight_sparsity: dict[str, float] | None = None  # 'layers.{i}.{group}' -> measured zeros

    def to_json(self) -> dict:
        return dict(self.__dict__, half_perplexities=list(self.half_perplexities))


def group_weight_zeros(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(zeros, weights) of every linear group 'layers.{i}.{group}'."""
    _, blocks = find_blocks(model)
    out = {}
    for block in blocks:
        for group, linears in block.groups.items():
            facts = [weight_facts(linear) for linear in linears.values()]
            out[f"layers.{block.index}.{group}"] = (sum(f[3] for f in facts), sum(f[0] * f[1] for f in facts))
    return out


LOSS_CHUNK = 128  # positions whose logits exist at once: the peak no longer grows with seqlen x vocabulary


def final_hidden(model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """The decoder's last hidden states (after its final norm), without computing any logits."""
    return model.get_decoder()(input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def logits_from_hidden(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on some positions' final hidden states, with the family's logit post-processing.

    Gemma-2/3 soft-cap the logits (``final_logit_softcapping``), Cohere scales them
    (``logit_scale``), Granite divides them (``logits_scaling``); float32 result.
    """
    logits = model.get_output_embeddings()(hidden).float()
    config = model.config
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def span_logits(model, ids: torch.Tensor, attention_mask: torch.Tensor, spans: list[tuple[int, int]]):
    """Per row ``r``, the logits at positions ``spans[r] = (start, end)``, float32.

    A transformers model computes only those positions' logits; any other callable that
    returns ``.logits`` (a wrapper, a test double) is called as it is.
    """
    if not hasattr(model, "get_decoder"):
        logits = model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits
        return [logits[r, s:e].float() for r, (s, e) in enumerate(spans)]
    hidden = final_hidden(model, ids, attention_mask)
    return [logits_from_hidden(model, hidden[r, s:e]) for r, (s, e) in enumerate(spans)]


@torch.no_grad()
def token_nlls(model: torch.nn.Module, ids: torch.Tensor, chunk: int = LOSS_CHUNK) -> torch.Tensor:
    """-log p(ids[:, t+1] | ids[:, :t+1]) for every t, shape (batch, seqlen - 1), float64.

    The logits are made ``chunk`` positions at a time from one pass of the decoder, so the
    memory for them is batch x chunk x vocabulary, not batch x seqlen x vocabulary.
    """
    return nlls_from_hidden(model, final_hidden(model, ids), ids, chunk)


def nlls_from_hidden(model: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor, chunk: int = LOSS_CHUNK):
    """``token_nlls`` from the decoder's final hidden states ``hidden`` (batch, seqlen, d) of ``ids``:
    the LM head and the loss ``chunk`` positions at a time; (batch, seqlen - 1), float64 on the CPU."""
    steps = ids.shape[1] - 1
    out = torch.empty(ids.shape[0], steps, dtype=torch.float64)
    for s in range(0, steps, chunk):
        e = min(s + chunk, steps)
        logits = logits_from_hidden(model, hidden[:, s:e])
        labels = ids[:, s + 1 : e + 1].to(logits.device)
        out[:, s:e] = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").double().cpu()
    return out


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = True) -> EvalResult:
    """Perplexity over ``windows`` (n, seqlen): every token after the first of each window is scored.

    When the windows start with a BOS (see ``duogpt.corpus.bos_token``), the first scored
    token is the first text token.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    sparsify.reset_counters(model)
    nll = torch.zeros(windows.shape[0], dtype=torch.float64)
    for i in tqdm(range(0, windows.shape[0], batch_size), desc="eval", disable=not progress):
        ids = windows[i : i + batch_size].to(device)
        nll[i : i + ids.shape[0]] = token_nlls(model, ids).sum(1)
    per_window = windows.shape[1] - 1
    tokens = per_window * windows.shape[0]
    half = max(1, windows.shape[0] // 2)
    halves = (nll[:half], nll[half:]) if windows.shape[0] > 1 else (nll, nll)
    overall, per_layer = sparsify.measured_sparsity(model)
    zeros = group_weight_zeros(model)
    sparsify.reset_counters(model, counting=False)
    return EvalResult(
        perplexity=math.exp(float(nll.sum()) / tokens),
        tokens=tokens,
        weight_sparsity=sum(z for z, _ in zeros.values()) / sum(t for _, t in zeros.values()),  # all blocks' linears
        activation_sparsity=overall,
        wall_seconds=time.perf_counter() - start,
        peak_rss_mb=peak_rss_mb(),
        per_layer_activation_sparsity=per_layer,
        per_layer_weight_sparsity={k: z / t for k, (z, t) in zeros.items()},
        half_perplexities=tuple(math.exp(float(h.sum()) / (per_window * len(h))) for h in halves),
    )
