"""Pruned checkpoints: the compact layout ``duogpt.load`` reads, a dense one ``transformers`` reads, ``duogpt.json``.

Format 2, layout ``compact`` (what ``duogpt prune`` writes): ``duogpt-NNNNN.safetensors``, one
shard per decoder block and one for the rest, and ``duogpt.safetensors.index.json``. A
pruned linear whose packed form is smaller than its dense weight is stored only packed
(``<name>.weight.bitmaps / .values / .offsets / .meta``, see ``duogpt.runtime.format``);
embeddings, norms, biases and any linear that packing would not shrink are ordinary tensors.
Every shard's metadata and the index carry ``duogpt_format_version``. The shards are not
named ``model*`` so that ``transformers`` does not half-load the directory with random
linears: ``duogpt export DIR --dense OUT`` writes what it reads.

Layout ``dense`` (``duogpt export --dense``, and every format 1 checkpoint): ``model-NNNNN``
shards of the masked dense weights that ``transformers`` loads as a plain model; format 1
also has the packed copy beside them (``duogpt-sparse-NNNNN``).

``duogpt.json`` holds the format version and layout, the method and settings, per-linear
weight sparsity and reconstruction error, the activation thresholds ('layers.{i}.{group}'
-> tau), and the directory's size against the same weights stored dense.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from duogpt import memory
from duogpt.errors import UsageError
from duogpt.files import check_out_dir, staged_dir
from duogpt.models import Block, find_blocks, layers_prefix, load_model, source_dtype
from duogpt.pruning import sparsify
from duogpt.runtime.format import unpack
from duogpt.runtime.linear import (
    RUNTIMES,
    DualSparseLinear,
    decode_paths,
    load_packed,
    packed_form,
    read_packed,
    to_sparse_runtime,
    weight_facts,
)
from duogpt.shards import ShardReader, ShardWriter

META_FILE = "duogpt.json"
FORMAT_VERSION = 2
SHARD_PREFIX = "duogpt"  # compact layout: duogpt-NNNNN.safetensors and duogpt.safetensors.index.json
LAYOUTS = ("compact", "dense")


class CheckpointWriter:
    """The one writer of pruned checkpoints, into a staged directory (see :func:`writer`).

    Blocks are added in order as they finish (one shard each), then :meth:`finish` adds
    every other tensor, the config, tokenizer and ``duogpt.json``. The in-memory prune adds
    all blocks at the end, the out-of-core prune one at a time; the files are the same.
    """

    def __init__(self, directory: Path, prefix: str, layout: str = "compact"):
        if layout not in LAYOUTS:
            raise UsageError(f"unknown checkpoint layout {layout!r}: use one of {', '.join(LAYOUTS)}")
        self.directory, self.prefix, self.layout = directory, prefix, layout
        if layout == "compact":
            self.weights = ShardWriter(directory, SHARD_PREFIX, {"duogpt_format_version": str(FORMAT_VERSION)})
        else:  # what transformers reads
            self.weights = ShardWriter(directory, "model")
        self.packed_bytes = self.packed_dense_bytes = 0  # pruned linears stored packed, and their dense size
        self.dense_bytes = 0  # every tensor as if stored dense: the size of the same model unpruned

    def add_block(self, block: Block) -> None:
        tensors, linear_weights = {}, set()
        for qual, linear in block.linears().items():
            name = f"{self.prefix}.{block.index}.{qual}.weight"
            linear_weights.add(f"{qual}.weight")
            n, k, value_bytes, _ = weight_facts(linear)
            dense = n * k * value_bytes
            self.dense_bytes += dense
            sp = packed_form(linear) if self.layout == "compact" else None
            if sp is not None and sp.nbytes() < dense:
                tensors.update(sp.tensors(prefix=f"{name}."))
                self.packed_bytes += sp.nbytes()
                self.packed_dense_bytes += dense
            else:
                tensors[name] = linear.weight.data  # unpacked if the model holds it packed
        for n, t in block.module.state_dict().items():
            if n not in linear_weights:
                tensors[f"{self.prefix}.{block.index}.{n}"] = t
                self.dense_bytes += t.numel() * t.element_size()
        self.weights.write(tensors)

    def finish(self, model, tokenizer, run: dict) -> None:
        """Write the non-block tensors, config, tokenizer and ``duogpt.json`` (with ``run``: the prune's fields)."""
        rest, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if not name.startswith(self.prefix + ".") and tensor.data_ptr() not in seen:  # tied: saved once
                seen.add(tensor.data_ptr())
                rest[name] = tensor
                self.dense_bytes += tensor.numel() * tensor.element_size()
        self.weights.write(rest)
        self.weights.finish()
        model.config.dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(self.directory)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(self.directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.directory)
        files = [f for f in self.directory.rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        meta = {
            "format": "duogpt",
            "format_version": FORMAT_VERSION,
            "layout": self.layout,
            **{k: v for k, v in run.items() if k not in ("format", "format_version", "layout", "size")},
            "checkpoint_mb": size / 2**20,
            "size": {"directory_bytes": size, "dense_bytes": self.dense_bytes, "ratio": size / self.dense_bytes},
            "sparse_format": {"bytes": self.packed_bytes, "dense_bytes": self.packed_dense_bytes},
        }
        (self.directory / META_FILE).write_text(json.dumps(meta, indent=1))


@contextlib.contextmanager
def writer(out: str | Path, model, force: bool = False, layout: str = "compact") -> Iterator[CheckpointWriter]:
    """A :class:`CheckpointWriter` whose directory replaces ``out`` only when the block ends without error."""
    with staged_dir(check_out_dir(out, force)) as tmp:
        yield CheckpointWriter(tmp, layers_prefix(model), layout)


def save(model, tokenizer, run: dict, out: str | Path, force: bool = False, layout: str = "compact") -> Path:
    """Write the whole (in-memory) model as a checkpoint at ``out``, atomically; ``run``: duogpt.json's fields."""
    with writer(out, model, force, layout) as w:
        for block in find_blocks(model)[1]:
            w.add_block(block)
        w.finish(model, tokenizer, run)
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
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UsageError(
            f"{meta_path}: checkpoint format {version!r} is newer than this duogpt reads ({FORMAT_VERSION}): "
            "upgrade duogpt (pip install -U duogpt)"
        )
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("method"), str):
        raise UsageError(f"{meta_path} has no valid 'config' section: re-run duogpt prune to rewrite it")
    for name, tau in meta["thresholds"].items():
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise UsageError(
                f"{meta_path}: threshold {name!r} is {tau!r}, not a finite number >= 0: re-run duogpt prune"
            )
    return meta


def layout_of(path: str | Path) -> str:
    """'compact' (format 2's packed shards) or 'dense' (model-* shards: a plain model, an export, format 1)."""
    return "compact" if (Path(path) / f"{SHARD_PREFIX}.safetensors.index.json").is_file() else "dense"


def load(path: str | Path, device: str = "cpu", sparsify_prefill: bool | None = None, runtime: str | None = None):
    """Load a pruned checkpoint with its sparsifiers installed: returns (model, tokenizer, meta).

    ``runtime``: 'sparse' holds pruned linears packed and runs them through the kernels,
    'dense' holds masked dense weights; None: 'sparse' for a compact checkpoint or one with
    a packed copy, else 'dense'. A compact checkpoint is built from its packed form without
    ever holding all dense weights (with 'dense' each is unpacked as it is read).
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    meta = read_meta(path)
    if layout_of(path) == "compact":
        model, tokenizer = load_compact(path, runtime or "sparse")
    else:
        model, tokenizer = load_model(str(path))
        packed = load_packed(path) if meta is not None and runtime != "dense" else None
        if runtime == "sparse" or packed is not None:
            to_sparse_runtime(model, packed)
    model.to(device)
    if meta is not None:
        prefill = meta["config"].get("sparsify_prefill", True) if sparsify_prefill is None else sparsify_prefill
        if not isinstance(prefill, bool):
            raise UsageError(f"{Path(path) / META_FILE}: config.sparsify_prefill must be true or false")
        sparsify.install(model, meta["thresholds"], prefill)
    decode_paths(model)  # both runtimes, after the sparsifiers: the lean decode step, the head and the linears' paths
    return model, tokenizer, meta


def load_any(model: str | None, device: str = "cpu", runtime: str | None = None):
    """(model, tokenizer, meta) from a duogpt directory, a plain checkpoint or a hub id (meta None).

    A plain model gets the runtime asked for ('dense' when None).
    """
    if model is not None and Path(model).is_dir():
        return load(model, device=device, runtime=runtime)
    lm, tokenizer = load_model(model, device=device)
    if runtime == "sparse":
        to_sparse_runtime(lm)
    decode_paths(lm)
    return lm, tokenizer, None


def load_compact(path: str | Path, runtime: str = "sparse"):
    """(model, tokenizer) from a compact checkpoint: built on the meta device, filled shard by shard.

    Packed linears become ``DualSparseLinear`` (runtime 'sparse') or are unpacked one at a
    time into ordinary linears ('dense'); every other tensor is read by name. The peak is
    about the packed weights plus one shard's mapped pages.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    reader = ShardReader(path, SHARD_PREFIX)
    config = AutoConfig.from_pretrained(path)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=source_dtype(config))
    model.eval()
    prefix = layers_prefix(model)
    for block in find_blocks(model)[1]:
        for qual, linear in block.linears().items():
            name = f"{prefix}.{block.index}.{qual}"
            if f"{name}.weight.meta" in reader:
                _place_packed(block.module, qual, linear, read_packed(reader, f"{name}.weight", str(path)), runtime,
                              reader.get(f"{name}.bias") if linear.bias is not None else None, name)  # fmt: skip
    for name, param in list(model.named_parameters()):
        if param.is_meta and name in reader:
            value = reader.get(name)
            if tuple(value.shape) != tuple(param.shape):
                raise UsageError(f"{path}: {name} has shape {tuple(value.shape)}, its config {tuple(param.shape)}: "
                                 "the checkpoint does not match its config.json")  # fmt: skip
            set_module_tensor_to_device(model, name, "cpu", value=value)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise UsageError(f"{path} has no tensor {missing[0]!r}: the checkpoint does not match its config.json")
    if runtime == "sparse":
        decode_paths(model)
    tokenizer = _tokenizer(path)
    memory.trim()  # the reads' temporaries are done: hand their heap back
    return model, tokenizer


def _place_packed(parent_block, qual: str, linear, sp, runtime: str, bias, name: str) -> None:
    """Put a packed weight where ``linear`` is: as a DualSparseLinear, or unpacked into the linear."""
    from accelerate.utils import set_module_tensor_to_device

    dtype = linear.weight.dtype
    if sp.shape != (linear.out_features, linear.in_features) or sp.values.dtype != dtype:
        raise UsageError(
            f"{name}: packed weight {sp.shape} {sp.values.dtype}, config {(linear.out_features, linear.in_features)} "
            f"{dtype}: the checkpoint does not match its config.json"
        )
    if runtime == "sparse":
        parent, attr = qual.split(".")
        setattr(getattr(parent_block, parent), attr, DualSparseLinear(sp, bias))
        return
    set_module_tensor_to_device(linear, "weight", "cpu", value=unpack(sp))
    if bias is not None:
        set_module_tensor_to_device(linear, "bias", "cpu", value=bias)


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):  # saved without one (the Python API with no tokenizer)
        return None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every weight of a checkpoint by its ``transformers`` name, dense (packed ones unpacked), on the CPU."""
    path = Path(path)
    reader = ShardReader(path, SHARD_PREFIX if layout_of(path) == "compact" else "model")
    out = {}
    for key in reader.weight_map:
        if key.endswith(".weight.meta"):
            name = key[: -len(".meta")]
            out[name] = unpack(read_packed(reader, name, str(path)))
        elif not key.endswith((".weight.bitmaps", ".weight.values", ".weight.offsets")):
            out[key] = reader.get(key)
    return out
