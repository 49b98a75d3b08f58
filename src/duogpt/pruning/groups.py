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
"""

from __future__ import annotations

from duogpt.pruning import sparsify
from duogpt.pruning.distributed import all_sum, all_sum_floats
from duogpt.pruning.methods import Method
from duogpt.pruning.spill import ChunkStore
from duogpt.pruning.statistics import Accumulator, DenseRun, Statistics, group_input, weigh_sink_


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
    acc, zeros, total = Accumulator(method.statistics), 0, 0
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
        with result.timed("statistics"):
            acc.add(fit, dense_c)
        del fit, dense_c
    if comp is not None:
        zeros, total = all_sum_floats([zeros, total])
        result.calib_act_sparsity[name] = zeros / total
    with result.timed("statistics"):
        return acc.finish(dense.out_norm2 if dense is not None else {})


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
