"""duogpt: dual-sparse (weights + activations) pruning of causal LMs, calibrated without training."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"
__all__ = ["prune", "load", "calibrate_activation_sparsity", "__version__"]


def prune(
    model: str | None = None,
    *,
    method: str = "duogpt",
    weight_sparsity: float = 0.5,
    act_sparsity: float = 0.5,
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
    resume: bool = True,
    **settings,
):
    """Prune ``model`` (hub id, local path, or None for the default) and return it.

    ``settings`` are the other fields of :class:`duogpt.pipeline.PruneConfig`
    (pattern, alpha, ridge, correction, calib, nsamples, seqlen, seed, ...). With ``out``
    the checkpoint is saved there (an existing one only with ``force``), and the state after
    every block is kept in ``<out>.duogpt-work`` until it is: an interrupted prune run again
    with the same arguments continues from its last finished block (``resume=False``
    starts over). The returned model has its sparsifiers installed and the run's report
    at ``model.duogpt_report``.
    """
    import shutil

    import torch

    from duogpt import checkpoint, data
    from duogpt.models import load_model, resolve_model_path
    from duogpt.pipeline import PruneConfig, prune_model
    from duogpt.resume import work_dir_for

    cfg = PruneConfig(method=method, weight_sparsity=weight_sparsity, act_sparsity=act_sparsity, **settings)
    cfg.validate()
    work = None
    if out is not None:
        checkpoint.check_out_dir(out, force)
        work = work_dir_for(out)
        if not resume:
            shutil.rmtree(work, ignore_errors=True)
    text = data.load_text(cfg.calib, "calib")
    lm, tokenizer = load_model(model, device=device)
    samples = data.calibration_samples(data.tokenize(tokenizer, text), cfg.nsamples, cfg.seqlen, cfg.seed)
    from duogpt import resources
    from duogpt.evaluate import peak_rss_mb
    from duogpt.pipeline import stream_names

    need = resources.estimate(lm, cfg.nsamples, cfg.seqlen, len(stream_names(cfg)), with_work_dir=out is not None)
    resources.check(need, out)
    torch.manual_seed(cfg.seed)
    result = prune_model(lm, samples, cfg, progress=progress, work_dir=work)
    result.resources = {**need.to_json(), "peak_rss_mb": peak_rss_mb()}
    lm.duogpt_report = result
    if out is not None:
        checkpoint.save(lm, tokenizer, result, out, base_model=model or resolve_model_path(None), force=force)
        shutil.rmtree(work, ignore_errors=True)
    return lm


def load(path: str | Path, device: str = "cpu", runtime: str = "dense"):
    """Load a checkpoint written by ``duogpt prune`` as a transformers model with sparsifiers.

    ``runtime='sparse'`` runs decode steps through the dual-sparse CPU kernel.
    """
    from duogpt import checkpoint

    model, _, _ = checkpoint.load(path, device=device, runtime=runtime)
    return model


def calibrate_activation_sparsity(model, samples, act_sparsity: float, progress: bool = True) -> dict[str, float]:
    """Install TEAL-style thresholds on ``model`` (weights untouched), calibrated block by block."""
    from duogpt.pipeline import PruneConfig, prune_model

    cfg = PruneConfig(method="magnitude", weight_sparsity=0.0, act_sparsity=act_sparsity)
    return prune_model(model, samples, cfg, progress=progress).thresholds
