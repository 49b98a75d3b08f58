"""The Python API: prune a model, load a pruned one, calibrate activation sparsity alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from duogpt import checkpoint, corpus
from duogpt.config import PruneConfig
from duogpt.evaluation.perplexity import peak_rss_mb
from duogpt.files import check_out_dir, run_lock
from duogpt.models import load_model, resolve_model_path
from duogpt.pruning import preflight
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
    **settings,
):
    """Prune ``model`` (hub id, local path, or None for the default) and return it.

    ``config`` is a :class:`duogpt.PruneConfig` (default: its defaults); ``settings`` override
    its fields by name (method, weight_sparsity, act_sparsity, pattern, alpha, nsamples, ...).
    With ``out`` the checkpoint is saved there (an existing one only with ``force``), and the
    state after every block is kept in ``<out>.duogpt-work`` until it is: an interrupted prune
    run again with the same arguments continues from its last finished block
    (``resume=False`` starts over). The returned model has its sparsifiers installed and the
    run's report at ``model.duogpt_report``.
    """
    cfg = (config or PruneConfig()).replace(**settings)
    if out is None:
        return _prune(model, cfg, None, device, progress, force)
    with run_lock(out, "prune"):
        check_out_dir(out, force)
        if not resume:
            shutil.rmtree(work_dir_for(out), ignore_errors=True)
        return _prune(model, cfg, out, device, progress, force)


def _prune(model, cfg: PruneConfig, out, device: str, progress: bool, force: bool):
    work = None if out is None else work_dir_for(out)
    text = corpus.load_text(cfg.calib, "calib")
    lm, tokenizer = load_model(model, dtype=cfg.dtype, device=device)
    bos = corpus.bos_token(tokenizer, cfg.bos)
    samples = corpus.calibration_samples(corpus.tokenize(tokenizer, text), cfg.nsamples, cfg.seqlen, cfg.seed, bos)
    need = preflight.estimate(lm, cfg.nsamples, cfg.seqlen, len(stream_names(cfg)), with_work_dir=out is not None)
    preflight.check(need, out)
    torch.manual_seed(cfg.seed)
    result = prune_model(lm, samples, cfg, progress=progress, work_dir=work)
    result.resources = {**need.to_json(), "peak_rss_mb": peak_rss_mb()}
    result.bos_token_id = bos
    lm.duogpt_report = result
    if out is not None:
        checkpoint.save(lm, tokenizer, result, out, base_model=model or resolve_model_path(None), force=force)
        shutil.rmtree(work, ignore_errors=True)
    return lm


def load(path: str | Path, device: str = "cpu", runtime: str = "dense"):
    """Load a checkpoint written by ``duogpt prune`` as a transformers model with sparsifiers.

    ``runtime='sparse'`` runs decode steps through the dual-sparse CPU kernel.
    """
    model, _, _ = checkpoint.load(path, device=device, runtime=runtime)
    return model


def calibrate_activation_sparsity(model, samples, act_sparsity: float, progress: bool = True) -> dict[str, float]:
    """Install TEAL-style thresholds on ``model`` (weights untouched), calibrated block by block."""
    cfg = PruneConfig(method="magnitude", weight_sparsity=0.0, act_sparsity=act_sparsity)
    return prune_model(model, samples, cfg, progress=progress).thresholds
