"""One linear group's calibration within a block, chunk by chunk: its threshold, then its statistics.

For a method that carries the compressed stream (``comp``), the threshold pass runs the block
up to the group on each calibration chunk and keeps only the |x| the threshold is taken from
(``sparsify.ThresholdSample``: every value, or a seeded sample of positions); the statistics
pass sparsifies each chunk's inputs with that threshold and adds them to the sums
(``statistics.Accumulator``) beside the same chunk's dense inputs. Both kinds of inputs wait in
a ``spill.ChunkStore`` between the pass that makes them and the one that uses them: in memory,
or (out-of-core prunes) in files, one chunk resident at a time. The sums run over the chunks in
the same order either way: the same bits, and the same as one process summing every chunk.

With ``--sink-weight W`` each sequence's first token is weighted ``W`` in the sums (its rows of the
fit and dense inputs scaled by ``sqrt(W)``, ``statistics.weigh_sink_``), after the threshold is set.

With ``--alpha auto`` every ``HOLD_EVERY``-th calibration sequence (by its index in the whole
set, whichever process holds it) is also summed apart: the held-out statistics the solver
chooses alpha on (``solvers.choose_alpha``).
"""

from __future__ import annotations

import torch

from duogpt.pruning import sparsify
from duogpt.pruning.distributed import all_sum, all_sum_floats
from duogpt.pruning.methods import Method
from duogpt.pruning.spill import ChunkStore
from duogpt.pruning.statistics import Accumulator, DenseRun, Statistics, group_input, weigh_sink_

HOLD_EVERY = 4


def group_statistics(
    model, block, group: str, streams: dict, kw: list[dict], cfg, result, split, method: Method,
    dense: DenseRun | None, store: ChunkStore,
) -> Statistics:  # fmt: skip
    """Set the group's threshold (methods with a compressed stream) and return its statistics."""
    name = f"layers.{block.index}.{group}"
    comp, tau = streams.get("comp"), 0.0
    if comp is not None:
        tau = _threshold(block, group, comp, kw, cfg, result, split, store)
        result.thresholds[name] = tau
        sparsify.install(model, {name: tau}, cfg.sparsify_prefill)
    auto = cfg.alpha == "auto" and "G" in method.statistics
    acc, zeros, total = Accumulator(method.statistics | ({"held"} if auto else set())), 0, 0
    for c in range(len(kw)):
        fit = None
        if comp is not None:
            fit = sparsify.sparsify_(store.take(f"raw.{c}"), tau)  # in place: the raw inputs are not needed again
            zeros, total = zeros + int((fit == 0).sum()), total + fit.numel()
        if "calib" in streams:
            with sparsify.disabled(model), result.timed("forward"):
                fit = group_input(block, group, streams["calib"][c], kw[c])
        dense_c = None if dense is None else dense.take(group, c)
        for rows in (fit, dense_c):
            if rows is not None:
                weigh_sink_(rows, split.seqlen, cfg.sink_weight)
        held = held_rows(split, c, fit.shape[0]) if auto else None
        with result.timed("statistics"):
            acc.add(fit, dense_c, held)
        del fit, dense_c
    if comp is not None:
        zeros, total = all_sum_floats([zeros, total])
        result.calib_act_sparsity[name] = zeros / total
    with result.timed("statistics"):
        return acc.finish(dense.out_norm2 if dense is not None else {})


def held_rows(split, c: int, rows: int) -> torch.Tensor:
    """Which token rows of this process's chunk ``c`` are held out: those of the sequences whose
    index in the whole calibration set is a multiple of HOLD_EVERY, minus one, except each
    sequence's first token. The first position is the attention sink, with activations far above
    the rest; left in, it decides the held-out error of many layers (on the default model at
    50/50, perplexity 106.3 with it, 90.9 without)."""
    position = torch.arange(rows)
    sequence = split.mine[c] * split.batch_size + position // split.seqlen
    return (sequence % HOLD_EVERY == HOLD_EVERY - 1) & (position % split.seqlen > 0)


def _threshold(block, group, comp, kw, cfg, result, split, store: ChunkStore) -> float:
    """The group's threshold from its raw inputs on the compressed stream (with several processes,
    from every rank's chunks); the inputs wait in ``store`` under ``raw.CHUNK``."""
    width = next(iter(block.groups[group].values())).in_features
    sample = sparsify.ThresholdSample([t * width for t in split.chunk_tokens], cfg.seed)
    for c, chunk in enumerate(split.mine):
        with result.timed("forward"):
            raw = group_input(block, group, comp[c], kw[c])
        if cfg.act_sparsity > 0:
            with result.timed("statistics"):
                sample.add(chunk, raw)
        store.put(f"raw.{c}", raw)
        del raw
    if cfg.act_sparsity == 0:
        return 0.0
    with result.timed("statistics"):
        return sample.threshold(cfg.act_sparsity, reduce=all_sum)
