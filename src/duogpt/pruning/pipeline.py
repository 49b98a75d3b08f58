"""Block-by-block calibration: carry the calibration streams through the model and prune.

The streams a prune carries and the statistics it collects come from its method's entry
in ``duogpt.pruning.methods``. Every method's thresholds are calibrated on the ``comp``
stream as the pipeline reaches each group, so they are the final model's thresholds.
Within a block, groups are pruned in order q/k/v -> o -> gate/up -> down; each group's
inputs come from a block run that already uses the pruned earlier groups. Only one
block's activations are held at a time.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from duogpt import memory
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.logs import log
from duogpt.models import GROUPS, Block, find_blocks
from duogpt.pruning import allocation, alpha_choice, solvers, sparsify
from duogpt.pruning.distributed import my_chunks, share, share_object, world
from duogpt.pruning.groups import group_statistics
from duogpt.pruning.methods import Method, method_for
from duogpt.pruning.offload import OffloadedBlocks
from duogpt.pruning.result import LinearReport, PruneResult
from duogpt.pruning.resume import WorkDir, fingerprint
from duogpt.pruning.spill import ChunkStore
from duogpt.pruning.statistics import capture_inputs, dense_run, run_block


def stream_names(cfg: PruneConfig) -> list[str]:
    """The calibration streams a prune with ``cfg`` carries between blocks."""
    return method_for(cfg.method, cfg.hessian).streams(1.0 if cfg.targets_from_cost else cfg.act_sparsity)


def plan_targets(
    model, samples: torch.Tensor, cfg: PruneConfig, budget: allocation.Budget, out_of_core: bool, progress: bool
) -> tuple[allocation.Targets, dict | None]:
    """Per group (p_w, p_x) from the settings (see ``pruning/allocation.py``), and the search's record
    (None for uniform); with several processes the search runs on rank 0 and is shared."""
    if cfg.allocation == "uniform":
        if cfg.target_speedup is None:
            return allocation.uniform(model, cfg.weight_sparsity, cfg.act_sparsity), None
        return allocation.uniform_for_speedup(model, cfg.target_speedup, budget), None
    if out_of_core:
        raise UsageError(f"--allocation {cfg.allocation} needs every block in memory: drop --offload")
    speedup = cfg.target_speedup or budget.speedup(
        model, allocation.uniform(model, cfg.weight_sparsity, cfg.act_sparsity)
    )
    found = None
    if world()[0] == 0:
        found = allocation.search(model, samples, speedup, budget, progress)
    return share_object(found, 0)


def at_targets(cfg: PruneConfig, targets: allocation.Targets, name: str) -> PruneConfig:
    """The settings one group is pruned with: its own weight and activation sparsity."""
    p_w, p_x = targets[name]
    return dataclasses.replace(cfg, weight_sparsity=p_w, act_sparsity=p_x)


@torch.no_grad()
def prune_model(
    model: nn.Module,
    samples: torch.Tensor,
    cfg: PruneConfig,
    progress: bool = True,
    work_dir: str | Path | None = None,
    blocks_io: OffloadedBlocks | None = None,
    held: torch.Tensor | None = None,
) -> PruneResult:
    """Prune ``model`` in place to dual sparsity; returns thresholds and per-linear reports.

    ``held``: with ``--alpha auto``, the held-out windows its choice is made on
    (``corpus.held_out_samples``; see ``pruning/alpha_choice.py``).

    With ``work_dir`` the state after every block is saved there, and a prune that finds a
    state from the same run continues after its last finished block (bit-identical result).
    With ``blocks_io`` (an out-of-core prune) each block is loaded just before it is pruned
    and handed on and emptied right after.
    """
    cfg.validate()
    auto = _auto_alpha(cfg, held, blocks_io)
    start = time.perf_counter()
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    work = None if work_dir is None else WorkDir(work_dir, fingerprint(model, samples, asdict(cfg)))
    split = _Split.of(samples, cfg.batch_size)
    chunks = samples.to(device).split(cfg.batch_size)
    result = PruneResult(cfg, thresholds={})
    saved = work.load() if work is not None else None
    t_plan = time.perf_counter()
    budget = allocation.Budget.of(model, cfg.seqlen)
    if saved is not None and saved.get("targets"):
        result.targets = {name: tuple(pair) for name, pair in saved["targets"].items()}
        result.allocation = saved.get("allocation")
    else:
        result.targets, result.allocation = plan_targets(model, samples, cfg, budget, blocks_io is not None, progress)
    result.estimated_decode_speedup = budget.speedup(model, result.targets)
    result.resources["allocation_seconds"] = time.perf_counter() - t_plan
    hidden, kwargs = capture_inputs(model, [chunks[c] for c in split.mine])
    if blocks_io is not None:
        blocks_io.release_rest(model)
    streams = {name: list(hidden) for name in stream_names(cfg)}
    held_args = None
    if auto:  # the held-out windows ride the compressed stream as their own chunk
        ids = held.to(device)
        streams["held"], held_kwargs = capture_inputs(model, [ids])
        held_args = (ids, held_kwargs)
    sparsifiers = sparsify.install(model, {}, cfg.sparsify_prefill)
    first = 0
    if saved is not None:
        first = work.restore(saved, streams, result, device)
        finished, result.block_seconds[:] = list(result.block_seconds), []  # reading back is no block's time
        t_restore = time.perf_counter()
        for block in blocks[:first]:
            _with_block(blocks_io, block, lambda b: work.restore_block(b, device), result)
        result.block_seconds[:] = finished
        result.resources["resume_seconds"] = time.perf_counter() - t_restore
        sparsifiers = sparsify.install(model, result.thresholds, cfg.sparsify_prefill)
        start -= saved["seconds"]
        log.info("resuming from block %d of %d (state in %s)", first, len(blocks), work.path)
    desc = f"{cfg.method} {cfg.weight_sparsity:.0%}/{cfg.act_sparsity:.0%}"
    if cfg.targets_from_cost:
        desc = f"{cfg.method} {cfg.allocation}, est. {result.estimated_decode_speedup:.2f}x"
    bar = tqdm(blocks, desc=desc, disable=not progress or world()[0] != 0)
    # out of core, a group's inputs wait in files of the work directory (one chunk resident at a time)
    spill = blocks_io is not None and work is not None
    store = ChunkStore(work.path / f"chunks-{world()[0]}" if spill else None)
    for block in bar:
        if block.index < first:
            continue
        result.block_seconds.append({"block": block.index})
        t0 = time.perf_counter()
        _with_block(
            blocks_io,
            block,
            lambda b: _finish_block(model, b, streams, kwargs, cfg, result, work, start, split, store, held_args),
            result,
        )
        result.block_seconds[-1]["total"] = time.perf_counter() - t0
        for sp in sparsifiers.values():
            sp.forget()
        memory.trim()  # the block's temporaries are freed: keep the heap from creeping up block after block
    store.close()
    sparsify.reset_counters(model, counting=False)
    result.seconds = time.perf_counter() - start
    if work is not None:
        result.resources["work_state_mb"] = work.state_bytes / 2**20  # the largest resumable state written
    return result


@dataclass(frozen=True)
class _Split:
    """The calibration chunks (the single-process batches): tokens of each, and this rank's share."""

    chunk_tokens: tuple[int, ...]
    mine: tuple[int, ...]
    seqlen: int = 0  # tokens per calibration sequence
    batch_size: int = 0  # sequences per chunk (the last may have fewer)

    @staticmethod
    def of(samples: torch.Tensor, batch_size: int) -> _Split:
        chunks = samples.split(batch_size)
        rank, size = world()
        if len(chunks) < size:
            raise UsageError(
                f"{len(chunks)} calibration batch(es) for {size} processes: give more --nsamples or a smaller "
                "--batch-size (each process needs a batch), or run fewer processes"
            )
        return _Split(tuple(c.numel() for c in chunks), tuple(my_chunks(len(chunks))), samples.shape[1], batch_size)


def _with_block(blocks_io: OffloadedBlocks | None, block: Block, work, result: PruneResult) -> None:
    """``work(block)`` with the block's weights in memory (out of core: loaded before, handed on after)."""
    if blocks_io is not None:
        with result.timed("io"):
            blocks_io.load(block)
    work(block)
    if blocks_io is not None:
        with result.timed("io"):
            blocks_io.done(block)


def _auto_alpha(cfg: PruneConfig, held: torch.Tensor | None, blocks_io) -> bool:
    """Whether this prune chooses alpha per group (``--alpha auto`` with DuoGPT); refuses what it cannot do."""
    if not cfg.chooses_alpha:
        return False
    if blocks_io is not None:
        raise UsageError(alpha_choice.NEEDS_MEMORY)
    if held is None or held.ndim != 2 or held.shape[0] == 0:
        raise UsageError("--alpha auto needs held-out windows (prune_model(..., held=ids), corpus.held_out_samples)")
    return True


def _finish_block(
    model, block, streams, kwargs, cfg, result, work: WorkDir | None, start, split, store, held_args=None
) -> None:
    held = None if held_args is None else (held_args[0], held_args[1][block.index][0])
    _prune_block(model, block, streams, kwargs[block.index], cfg, result, split, store, held)
    if work is not None:
        with result.timed("io"):
            work.save(block, streams, result, time.perf_counter() - start)


def _prune_block(model, block: Block, streams: dict, kw: list[dict], cfg: PruneConfig, result, split, store, held=None):
    """Calibrate and prune one block group by group, then move every stream past it (``store``: where
    a group's inputs wait between the pass that makes them and the one that uses them; ``held``: with
    ``--alpha auto`` the held-out windows' token ids and this block's call arguments for them; their
    input to the block is ``streams["held"]``)."""
    method = method_for(cfg.method, cfg.hessian)
    dense = None
    if "dense" in streams:
        with result.timed("forward"):
            dense = dense_run(block, streams["dense"], kw, store, cfg.sink_weight)
        streams["dense"] = dense.outputs
    for group in GROUPS:
        gcfg = at_targets(cfg, result.targets, f"layers.{block.index}.{group}")
        stats = group_statistics(model, block, group, streams, kw, gcfg, result, split, method, dense, store)
        if held is None:
            result.linears.extend(_solve_group(block, group, method, gcfg, stats, result))
        else:
            _choose_and_solve(model, block, group, method, gcfg, stats, result, streams["held"][0], held[0])
        del stats
    del dense
    with result.timed("forward"):
        if "comp" in streams:
            streams["comp"] = run_block(block.module, streams["comp"], kw)
        if held is not None:
            streams["held"] = run_block(block.module, streams["held"], [held[1]])
        if "calib" in streams:
            with sparsify.disabled(model):
                streams["calib"] = run_block(block.module, streams["calib"], kw)


def _choose_and_solve(model, block, group, method: Method, cfg, stats, result: PruneResult, hidden, ids) -> None:
    """``--alpha auto``: the group solved at each candidate alpha, the one with the least loss of the
    held-out windows (``ids``, entering this block as ``hidden``) kept."""

    def loss() -> float:
        with result.timed("alpha"):
            return alpha_choice.held_out_loss(model, block.index, hidden, ids)

    weights = [linear.weight.data for linear in block.groups[group].values()]
    alpha, reports, losses = alpha_choice.choose(
        weights, lambda a: _solve_group(block, group, method, dataclasses.replace(cfg, alpha=a), stats, result), loss
    )
    result.linears.extend(reports)
    result.alpha_losses[f"layers.{block.index}.{group}"] = {str(a): v for a, v in losses.items()}
    log.info("layers.%d.%s: alpha %s (held-out losses %s)", block.index, group, alpha, losses)


def _solve_group(block, group, method: Method, cfg, stats, result: PruneResult) -> list[LinearReport]:
    """Solve every linear (every part of a fused one) of one group from its calibration statistics;
    returns their reports."""
    pattern = solvers.parse_pattern(cfg.pattern)
    parent = GROUPS[group][0]
    parts = [(linear, part) for lname, linear in block.groups[group].items() for part in block.parts(lname, linear)]
    rank, size = world()
    reports = []
    for i, (linear, part) in enumerate(parts):  # with several processes, part i is solved by rank i % size
        t0 = time.perf_counter()
        rows = linear.weight.data[part.start : part.stop]
        full = f"layers.{block.index}.{parent}.{part.name}"
        with result.timed("solve"):
            if i % size == rank:
                new, err, chosen = _solve_part(method, rows, stats, cfg, pattern, full, part.name)
            else:
                new, err, chosen = torch.empty_like(rows), None, {}
            new = share(new.contiguous(), i % size)
            err, seconds, chosen = share_object((err, time.perf_counter() - t0, chosen), i % size)
        rows.copy_(new)
        sparsity = float((rows == 0).float().mean())
        reports.append(LinearReport(full, sparsity, err, seconds, **chosen))
        log.info("%-28s sparsity %.3f  rel. error %s", full, sparsity, "n/a" if err is None else f"{err:.4f}")
    return reports


def _solve_part(
    method: Method, W, stats, cfg, pattern, full: str, name: str
) -> tuple[torch.Tensor, float | None, dict]:  # noqa: E501
    """Pruned weights (in W's dtype), the relative output error and the settings the solver chose
    for this linear; errors name the layer."""
    if not solvers.all_finite(W):
        raise UsageError(f"{full}: the weights contain NaN/Inf: the model file is damaged or overflowed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", solvers.DampeningWarning)
        try:
            new, chosen = method.solve(W, stats, cfg, pattern)
        except solvers.IllConditioned as err:
            raise UsageError(
                f"{full}: {err}: check the model's weights, or give more calibration tokens (--nsamples)"
            ) from None
    for w in caught:
        log.warning("%s: %s", full, w.message)
    if not solvers.all_finite(new):
        raise UsageError(f"{full}: the solver produced NaN/Inf; raise --percdamp or check the model weights")
    err = method.error(W, new, stats, name) if method.error else None
    return new.to(W.dtype), err, chosen
