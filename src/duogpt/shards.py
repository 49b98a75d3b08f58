"""Safetensors checkpoints in shards: read one tensor by name without the rest, write shards and an index.

Reading: ``model.safetensors.index.json`` (its ``weight_map`` names each tensor's shard) or a
single ``model.safetensors``; each tensor is read on its own from the memory-mapped file, and
only one shard is mapped at a time (mapped pages count as resident memory).

Writing: each call writes one shard ``<prefix>-NNNNN.safetensors`` (the pruned checkpoint: one
per decoder block, then one for the rest), and ``<prefix>.safetensors.index.json`` maps every
name to its shard. The files depend only on the tensors and the order they are written in,
which is how the in-memory and the out-of-core prune write the same checkpoint byte for byte;
nothing is held back, so an out-of-core prune keeps no finished block in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from duogpt.errors import UsageError


class ShardReader:
    """Tensors of a safetensors checkpoint by name, each read only when asked for."""

    def __init__(self, directory: str | Path, prefix: str = "model"):
        self.directory = Path(directory)
        self._handles: dict[str, object] = {}
        index = self.directory / f"{prefix}.safetensors.index.json"
        single = self.directory / f"{prefix}.safetensors"
        if index.is_file():
            try:
                self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise UsageError(f"{index} is damaged (no weight_map): re-download or re-export the model") from None
        elif single.is_file():
            self.weight_map = dict.fromkeys(self._open(single.name).keys(), single.name)
        else:
            raise UsageError(
                f"{self.directory} has no {prefix}.safetensors(.index.json): pass a safetensors checkpoint"
            )
        missing = sorted({f for f in self.weight_map.values() if not (self.directory / f).is_file()})
        if missing:
            raise UsageError(
                f"{self.directory}: shard(s) {', '.join(missing)} listed in the index are missing: "
                "re-download or re-export the model"
            )

    def _open(self, file: str):
        if file not in self._handles:
            self._handles.clear()  # unmap the previous shard
            try:
                self._handles[file] = safe_open(str(self.directory / file), framework="pt")
            except Exception as err:  # safetensors raises several types for a truncated or damaged file
                raise UsageError(
                    f"{self.directory / file} is truncated or damaged ({type(err).__name__}): "
                    "re-download or re-export the model"
                ) from None
        return self._handles[file]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        if name not in self.weight_map:
            raise UsageError(f"{self.directory} has no tensor {name!r}: the checkpoint does not match its config")
        file = self.weight_map[name]
        try:
            tensor = self._open(file).get_tensor(name)
        except UsageError:
            raise
        except Exception as err:
            raise UsageError(
                f"{self.directory / file}: reading {name!r} failed ({type(err).__name__}): the shard is truncated "
                "or damaged; re-download or re-export the model"
            ) from None
        return tensor if dtype is None else tensor.to(dtype)


class ShardWriter:
    """Writes one shard per call, in order; ``finish`` writes the index."""

    def __init__(self, directory: str | Path, prefix: str):
        self.directory, self.prefix = Path(directory), prefix
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self.shards = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        self.shards += 1
        file = f"{self.prefix}-{self.shards:05d}.safetensors"
        tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        save_file(tensors, str(self.directory / file), metadata={"format": "pt"})
        for name, tensor in tensors.items():
            self.weight_map[name] = file
            self.total += tensor.numel() * tensor.element_size()

    def finish(self) -> Path:
        index = self.directory / f"{self.prefix}.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"total_size": self.total}, "weight_map": self.weight_map}, indent=1))
        return index
