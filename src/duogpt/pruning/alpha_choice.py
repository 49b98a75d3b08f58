"""``--alpha auto``: each group's residual scale chosen by the model's loss on held-out sequences.

``HELD_SEQUENCES`` more windows of the calibration text (``corpus.held_out_samples``: none overlaps a
calibration window) enter no threshold and no statistic, so no layer is fit to them. They ride the
compressed stream beside the calibration chunks (through the blocks as pruned so far, sparsifiers on).
When a group's statistics are in, the group is solved at each alpha in ``ALPHAS`` (the ridge as set);
for each, the held-out windows run from the block's input through the rest of the model (its later
groups and blocks not yet pruned) to the mean next-token loss, and the alpha with the least loss is
kept before the next group is calibrated. With several processes every rank runs the same passes and
rank 0's losses decide.

Why a loss over the whole rest of the model, and why the candidates stop at the default 0.25
(docs/method.md): every per-layer criterion (the layer's error on held-out tokens, however weighted)
chooses alpha near 1 and makes the model worse, because the corrected layers overfit as a composition
while each one alone generalises. The held-out loss sees that; but over candidates above 0.25 it also
fits the calibration text's domain (more correction on attention and down_proj helps the calibration
domain and costs another domain more), which held-out text of the same domain cannot see. Capped at
0.25 it only damps the correction where the loss says so; on the default model that improved both
texts.

Cost: ``len(ALPHAS)`` passes of the held-out windows over the rest of the model per group, about
``2 len(ALPHAS)`` full forward passes of them per block; nothing else is held but the held-out stream
and two copies of one group's weights. It needs every block in memory (refused with --offload).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from duogpt.evaluation.perplexity import nlls_from_hidden
from duogpt.models import find_blocks
from duogpt.pruning.distributed import share_object

ALPHAS = (0.0, 0.125, 0.25)  # the candidates, in order; ties keep the first
HELD_SEQUENCES = 4  # held-out windows of the calibration text, beside --nsamples
NEEDS_MEMORY = (
    "--alpha auto runs held-out windows through the rest of the model, which needs every block in memory: "
    "drop --offload, or give a fixed --alpha"
)


class _Skip(nn.Module):
    """Stands in for a block the held-out stream has already passed."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def held_out_loss(model: nn.Module, index: int, hidden: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token loss of ``ids`` when block ``index`` gets ``hidden`` as its input: the decoder
    runs from there (earlier blocks skipped, its own final norm), then the LM head and the loss a
    chunk of positions at a time (``perplexity.nlls_from_hidden``)."""
    layers, _ = find_blocks(model)
    originals = list(layers)

    def swap(_mod, args, kwargs):
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    handle = originals[index].register_forward_pre_hook(swap, with_kwargs=True)
    for j in range(index):
        layers[j] = _Skip()
    try:
        final = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    finally:
        handle.remove()
        for j in range(index):
            layers[j] = originals[j]
    return float(nlls_from_hidden(model, final, ids).mean())


def choose(weights: list[torch.Tensor], solve: Callable[[float], list], loss: Callable[[], float]):
    """Solve at each alpha in ``ALPHAS`` and keep the one whose ``loss()`` is least.

    ``solve(alpha)`` writes the group's pruned weights into ``weights`` (in place) and returns its
    reports; each solve starts from the original weights. Returns ``(alpha, reports, losses)`` with
    the chosen solve's weights in place; ``losses`` maps each alpha to its loss."""
    original = [w.clone() for w in weights]
    losses: dict[float, float] = {}
    best = None
    for alpha in ALPHAS:
        for w, o in zip(weights, original, strict=True):
            w.copy_(o)
        reports = solve(alpha)
        losses[alpha] = share_object(loss(), 0)  # rank 0 decides for all
        if best is None or losses[alpha] < losses[best[0]]:
            best = (alpha, reports, [w.clone() for w in weights])
    for w, b in zip(weights, best[2], strict=True):
        w.copy_(b)
    return best[0], best[1], losses
