"""Pruned checkpoints: a sharded safetensors directory that ``transformers`` loads, plus ``duogpt.json``.

``duogpt.json`` holds the method and settings, per-linear weight sparsity and
reconstruction error, and the activation thresholds ('layers.{i}.{group}' -> tau).
The directory loads as a plain (dense-format, masked) model with ``transformers``;
``duogpt.load`` also reinstalls the sparsifiers.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

from duogpt.errors import UsageError
from duogpt.files import check_out_dir, staged_dir
from duogpt.models import Block, find_blocks, layers_prefix, load_model
from duogpt.pruning import sparsify
from duogpt.pruning.result import PruneResult
from duogpt.runtime.linear import PACKED_PREFIX, RUNTIMES, load_packed, packed_form, to_sparse_runtime
from duogpt.shards import ShardWriter

META_FILE = "duogpt.json"
FORMAT_VERSION = 1


class CheckpointWriter:
    """The one writer of pruned checkpoints, into a staged directory (see :func:`writer`).

    Blocks are added in order as they finish (each block's weights and its packed form are
    written at once, one shard each), then :meth:`finish` adds every other tensor, the config, tokenizer and
    ``duogpt.json``. The in-memory prune adds all blocks at the end, the out-of-core prune one
    at a time; the files are the same.
    """

    def __init__(self, directory: Path, prefix: str):
        self.directory, self.prefix = directory, prefix
        self.weights = ShardWriter(directory, "model")
        self.packed = ShardWriter(directory, PACKED_PREFIX)
        self.packed_bytes = self.dense_bytes = 0

    def add_block(self, block: Block) -> None:
        self.weights.write({f"{self.prefix}.{block.index}.{n}": t for n, t in block.module.state_dict().items()})
        packed = {}
        for qual, linear in block.linears().items():
            sp = packed_form(linear)
            packed.update(sp.tensors(prefix=f"layers.{block.index}.{qual}."))
            self.packed_bytes += sp.nbytes()
            self.dense_bytes += linear.weight.numel() * linear.weight.element_size()
        self.packed.write(packed)

    def finish(self, model, tokenizer, result: PruneResult, base_model: str) -> None:
        rest, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if not name.startswith(self.prefix + ".") and tensor.data_ptr() not in seen:  # tied: saved once
                seen.add(tensor.data_ptr())
                rest[name] = tensor
        self.weights.write(rest)
        self.weights.finish()
        self.packed.finish()
        model.config.dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(self.directory)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(self.directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.directory)
        files = [f for f in self.directory.rglob("*") if f.is_file()]
        meta = {
            "format": "duogpt",
            "format_version": FORMAT_VERSION,
            "base_model": base_model,
            **result.to_json(),
            "checkpoint_mb": sum(f.stat().st_size for f in files) / 2**20,
            "sparse_format": {
                "files": f"{PACKED_PREFIX}-*.safetensors",
                "bytes": self.packed_bytes,
                "dense_bytes": self.dense_bytes,
            },
        }
        (self.directory / META_FILE).write_text(json.dumps(meta, indent=1))


@contextlib.contextmanager
def writer(out: str | Path, model, force: bool = False) -> Iterator[CheckpointWriter]:
    """A :class:`CheckpointWriter` whose directory replaces ``out`` only when the block ends without error."""
    with staged_dir(check_out_dir(out, force)) as tmp:
        yield CheckpointWriter(tmp, layers_prefix(model))


def save(model, tokenizer, result: PruneResult, out: str | Path, base_model: str, force: bool = False) -> Path:
    """Write the whole (pruned, in-memory) model as a checkpoint at ``out``, atomically."""
    with writer(out, model, force) as w:
        for block in find_blocks(model)[1]:
            w.add_block(block)
        w.finish(model, tokenizer, result, base_model)
    return Path(out)


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
