"""The Python API: prune a model, load a pruned one, calibrate activation sparsity alone."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from duogpt import checkpoint, corpus
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.files import check_out_dir, remove_stale_stages, run_lock
from duogpt.logs import log
from duogpt.memory import peak_rss_mb
from duogpt.models import load_model, load_skeleton, resolve_model_path
from duogpt.pruning import alpha_choice, preflight
from duogpt.pruning.distributed import barrier, world
from duogpt.pruning.offload import OffloadedBlocks, load_offloaded
from duogpt.pruning.pipeline import prune_model, stream_names
from duogpt.pruning.resume import work_dir_for


def prune(
    model: str | None = None,
    config: PruneConfig | None = None,
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
    resume: bool = True,
    offload: bool | None = None,
    **settings,
):
    """Prune ``model`` (hub id, local path, or None for the default) and return it.

    ``config`` is a :class:`duogpt.PruneConfig` (default: its defaults); ``settings`` override
    its fields by name (method, weight_sparsity, act_sparsity, pattern, alpha, nsamples, ...).
    With ``out`` the checkpoint is saved there (an existing one only with ``force``), and the
    state after every block is kept in ``<out>.duogpt-work`` until it is: an interrupted prune
    run again with the same arguments continues from its last finished block
    (``resume=False`` starts over). ``offload=True`` prunes out of core (one block in memory at
    a time, read from the checkpoint's shards and written to ``out`` as it finishes); None
    chooses it when the in-memory prune would not fit. The returned model has its sparsifiers
    installed and the run's report at ``model.duogpt_report``; after an out-of-core prune its
    blocks are empty (the pruned model is at ``out``).
    """
    cfg = (config or PruneConfig()).replace(**settings)
    if out is None:
        if offload:
            raise UsageError("an out-of-core prune (--offload) writes its blocks as it goes: give --out DIR")
        return _prune(model, cfg, _Run(None, device, progress, force, False))
    run = _Run(Path(out), device, progress, force, offload)
    if world()[0] != 0:  # rank 0 holds the lock, cleans up and writes; the others compute beside it
        barrier()
        return _prune(model, cfg, run)
    with run_lock(out, "prune"):
        check_out_dir(out, force)
        remove_stale_stages(out)
        if not resume:
            shutil.rmtree(work_dir_for(out), ignore_errors=True)
        barrier()
        return _prune(model, cfg, run)


@dataclass
class _Run:
    """How a prune runs (none of it changes the result)."""

    out: Path | None
    device: str
    progress: bool
    force: bool
    offload: bool | None


def _choose_offload(model, cfg: PruneConfig, run: _Run) -> tuple[bool, preflight.Estimate]:
    """Out of core when asked, or when the in-memory prune would not fit and the out-of-core one does."""
    skeleton, _, _ = load_skeleton(model, cfg.dtype)
    streams = len(stream_names(cfg))

    def need(offload: bool) -> preflight.Estimate:
        return preflight.estimate(
            skeleton, cfg.nsamples, cfg.seqlen, streams, run.out is not None, offload, cfg.batch_size,
            held_out=cfg.chooses_alpha,
        )  # fmt: skip

    in_memory = need(False)
    offload = run.offload
    if offload is None:
        out_of_core = need(True)
        offload = (
            run.out is not None and not preflight.fits_in_memory(in_memory) and preflight.fits_in_memory(out_of_core)
        )
        if offload:
            log.info(
                "the model does not fit in memory for an in-memory prune (about %.1f GB): pruning out of core, "
                "one block at a time (--offload)",
                in_memory.memory / 2**30,
            )
            return True, out_of_core
    return offload, need(True) if offload else in_memory


def _prune(model, cfg: PruneConfig, run: _Run):
    offload, need = _choose_offload(model, cfg, run)
    if offload and cfg.chooses_alpha:
        raise UsageError(alpha_choice.NEEDS_MEMORY)
    preflight.check(need, run.out)
    text = corpus.load_text(cfg.calib, "calib")
    if offload:
        lm, tokenizer, reader, prefix = load_offloaded(model, cfg.dtype)
    else:
        lm, tokenizer = load_model(model, dtype=cfg.dtype, device=run.device)
    bos = corpus.bos_token(tokenizer, cfg.bos)
    tokens = corpus.tokenize(tokenizer, text)
    samples = corpus.calibration_samples(tokens, cfg.nsamples, cfg.seqlen, cfg.seed, bos)
    held = None
    if cfg.chooses_alpha:
        held = corpus.held_out_samples(tokens, alpha_choice.HELD_SEQUENCES, cfg.nsamples, cfg.seqlen, cfg.seed, bos)
    work = None if run.out is None else work_dir_for(run.out)
    base_model = model or resolve_model_path(None)
    torch.manual_seed(cfg.seed)
    writes = world()[0] == 0
    if offload:
        with checkpoint.writer(run.out, lm, run.force) if writes else contextlib.nullcontext() as w:
            on_done = w.add_block if writes else None
            blocks_io = OffloadedBlocks(reader, prefix, next(lm.parameters()).dtype, on_done=on_done)
            blocks_io.restore_rest(lm)
            result = prune_model(lm, samples, cfg, run.progress, work, blocks_io)
            _report(lm, result, need, bos, offload)
            if writes:
                blocks_io.restore_rest(lm)
                w.finish(lm, tokenizer, {"base_model": base_model, **result.to_json()})
    else:
        result = prune_model(lm, samples, cfg, progress=run.progress, work_dir=work, held=held)
        _report(lm, result, need, bos, offload)
        if run.out is not None and writes:
            checkpoint.save(lm, tokenizer, {"base_model": base_model, **result.to_json()}, run.out, force=run.force)
    if work is not None and writes:
        shutil.rmtree(work, ignore_errors=True)
    return lm


def _report(lm, result, need: preflight.Estimate, bos: int | None, offload: bool) -> None:
    before = result.resources.get("peak_rss_mb_before_resume") or 0.0  # an interrupted run's earlier processes
    result.resources = {**need.to_json(), **result.resources, "peak_rss_mb": max(peak_rss_mb(), before)}
    result.resources["offload"] = offload
    result.resources["world_size"] = world()[1]
    result.bos_token_id = bos
    lm.duogpt_report = result


def load(path: str | Path, device: str = "cpu", runtime: str | None = None):
    """Load a checkpoint written by ``duogpt prune`` as a transformers model with its sparsifiers.

    A compact checkpoint keeps its pruned linears packed (``runtime='sparse'``, the default
    for it): decode steps run through the dual-sparse kernels, longer inputs unpack one linear
    at a time. ``runtime='dense'`` holds masked dense weights. The model works with
    ``model.generate()`` and ``transformers.pipeline``.
    """
    model, _, _ = checkpoint.load(path, device=device, runtime=runtime)
    return model


def calibrate_activation_sparsity(model, samples, act_sparsity: float, progress: bool = True) -> dict[str, float]:
    """Install TEAL-style thresholds on ``model`` (weights untouched), calibrated block by block."""
    cfg = PruneConfig(method="magnitude", weight_sparsity=0.0, act_sparsity=act_sparsity)
    return prune_model(model, samples, cfg, progress=progress).thresholds
