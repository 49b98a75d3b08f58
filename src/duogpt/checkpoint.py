"""Pruned checkpoints: a ``save_pretrained`` directory plus ``duogpt.json``.

``duogpt.json`` holds the method and settings, per-linear weight sparsity and
reconstruction error, and the activation thresholds ('layers.{i}.{group}' -> tau).
The directory loads as a plain (dense-format, masked) model with ``transformers``;
``duogpt.load`` also reinstalls the sparsifiers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from duogpt.errors import UsageError
from duogpt.files import check_out_dir, write_dir
from duogpt.models import load_model
from duogpt.pruning import sparsify
from duogpt.pruning.result import PruneResult
from duogpt.runtime.linear import RUNTIMES, load_packed, save_packed, to_sparse_runtime

META_FILE = "duogpt.json"
FORMAT_VERSION = 1


def save(model, tokenizer, result: PruneResult, out: str | Path, base_model: str, force: bool = False) -> Path:
    """Write the checkpoint under a temporary name beside ``out``, then rename it into place."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _, packed_bytes, dense_bytes = save_packed(model, tmp)
        meta = {
            "format": "duogpt",
            "format_version": FORMAT_VERSION,
            "base_model": base_model,
            **result.to_json(),
            "checkpoint_mb": sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**20,
            "sparse_format": {"file": "duogpt-sparse.safetensors", "bytes": packed_bytes, "dense_bytes": dense_bytes},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))

    return write_dir(check_out_dir(out, force), fill)


def read_meta(path: str | Path) -> dict | None:
    """The parsed ``duogpt.json`` of a checkpoint directory, or None for a plain model."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{meta_path} is not valid JSON ({err}): re-run duogpt prune to rewrite it") from None
    if not isinstance(meta, dict) or meta.get("format") != "duogpt" or not isinstance(meta.get("thresholds"), dict):
        raise UsageError(f"{meta_path} is not a duogpt metadata file: re-run duogpt prune to rewrite it")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("method"), str):
        raise UsageError(f"{meta_path} has no valid 'config' section: re-run duogpt prune to rewrite it")
    for name, tau in meta["thresholds"].items():
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise UsageError(
                f"{meta_path}: threshold {name!r} is {tau!r}, not a finite number >= 0: re-run duogpt prune"
            )
    return meta


def load(path: str | Path, device: str = "cpu", sparsify_prefill: bool | None = None, runtime: str = "dense"):
    """Load a pruned checkpoint with its sparsifiers installed: returns (model, tokenizer, meta).

    ``runtime='sparse'`` swaps the pruned linears for ones that use the spMspV kernel at decode.
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    meta = read_meta(path)
    model, tokenizer = load_model(str(path), device=device)
    if runtime == "sparse":
        to_sparse_runtime(model, load_packed(path))
    if meta is not None:
        prefill = meta["config"].get("sparsify_prefill", True) if sparsify_prefill is None else sparsify_prefill
        if not isinstance(prefill, bool):
            raise UsageError(f"{Path(path) / META_FILE}: config.sparsify_prefill must be true or false")
        sparsify.install(model, meta["thresholds"], prefill)
    return model, tokenizer, meta


def load_any(model: str | None, device: str = "cpu", runtime: str = "dense"):
    """(model, tokenizer, meta) from a duogpt directory, a plain checkpoint or a hub id (meta None)."""
    if model is not None and Path(model).is_dir():
        return load(model, device=device, runtime=runtime)
    lm, tokenizer = load_model(model, device=device)
    if runtime == "sparse":
        to_sparse_runtime(lm)
    return lm, tokenizer, None
