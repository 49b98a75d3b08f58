"""Safetensors checkpoints in shards: read one tensor by name without the rest, write shards and an index.

Reading: ``<prefix>.safetensors.index.json`` (its ``weight_map`` names each tensor's shard) or
a single ``<prefix>.safetensors``. Each tensor is read straight from its file into a tensor of
its own (``readinto``, no memory map): a read costs exactly the tensor's bytes, nothing
stays mapped, and a caller can read into a buffer it allocated (with room to spare, as the
kernels' padded values need). Headers are checked against the file's size, so a truncated
or damaged shard is named before anything is read from it.

Writing: each call writes one shard ``<prefix>-NNNNN.safetensors`` (the pruned checkpoint: one
per decoder block, then one for the rest), and ``<prefix>.safetensors.index.json`` maps every
name to its shard. The files depend only on the tensors and the order they are written in,
which is how the in-memory and the out-of-core prune write the same checkpoint byte for byte;
nothing is held back, so an out-of-core prune keeps no finished block in memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from duogpt.errors import UsageError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 << 20


def _damaged(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} is truncated or damaged ({why}): re-download or re-export the model")


def read_header(path: Path) -> tuple[int, dict[str, dict]]:
    """(offset of the data, tensor entries) of a safetensors file, checked against its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 2 <= n <= min(size - 8, _MAX_HEADER):
                raise _damaged(path, "no valid header")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _damaged(path, "header is not JSON") from None
    except OSError as err:
        raise UsageError(f"{path} cannot be read ({err.strerror}): check the path and permissions") from None
    if not isinstance(header, dict):
        raise _damaged(path, "header is not a table")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            count = math.prod(entry["shape"])
            ok = entry["dtype"] in DTYPES and 0 <= begin <= end <= size - 8 - n
            ok = ok and end - begin == count * DTYPES[entry["dtype"]].itemsize
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _damaged(path, f"entry {name!r} does not fit the file")
    return 8 + n, header


class ShardReader:
    """Tensors of a safetensors checkpoint by name, each read only when asked for."""

    def __init__(self, directory: str | Path, prefix: str = "model"):
        self.directory = Path(directory)
        self._headers: dict[str, tuple[int, dict]] = {}
        index = self.directory / f"{prefix}.safetensors.index.json"
        single = self.directory / f"{prefix}.safetensors"
        if index.is_file():
            try:
                self.weight_map: dict[str, str] = dict(json.loads(index.read_text())["weight_map"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                raise UsageError(f"{index} is damaged (no weight_map): re-download or re-export the model") from None
        elif single.is_file():
            self.weight_map = dict.fromkeys(self._header(single.name)[1], single.name)
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

    def _header(self, file: str) -> tuple[int, dict]:
        if file not in self._headers:
            self._headers[file] = read_header(self.directory / file)
        return self._headers[file]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _entry(self, name: str) -> tuple[str, int, dict]:
        if name not in self.weight_map:
            raise UsageError(f"{self.directory} has no tensor {name!r}: the checkpoint does not match its config")
        file = self.weight_map[name]
        start, header = self._header(file)
        if name not in header:
            raise _damaged(self.directory / file, f"the index names {name!r} but the shard does not hold it")
        return file, start, header[name]

    def dtype_of(self, name: str) -> torch.dtype:
        return DTYPES[self._entry(name)[2]["dtype"]]

    def get(self, name: str, dtype: torch.dtype | None = None, spare: int = 0) -> torch.Tensor:
        """The tensor ``name`` (converted to ``dtype``). ``spare`` > 0: a 1-D tensor whose storage
        has ``spare`` zero elements after its end (read in place, no copy)."""
        file, start, entry = self._entry(name)
        shape, stored = tuple(entry["shape"]), DTYPES[entry["dtype"]]
        count = math.prod(shape)
        buf = torch.empty(count + spare, dtype=stored)
        buf[count:] = 0
        begin, end = entry["data_offsets"]
        if end > begin:
            with open(self.directory / file, "rb") as f:
                f.seek(start + begin)
                got = f.readinto(memoryview(buf.view(torch.uint8).numpy())[: end - begin])
            if got != end - begin:
                raise _damaged(self.directory / file, f"{name!r} ends early")
        tensor = buf[:count] if spare else buf.view(shape)
        return tensor if dtype is None or dtype == stored else tensor.to(dtype)


class ShardWriter:
    """Writes one shard per call, in order; ``finish`` writes the index."""

    def __init__(self, directory: str | Path, prefix: str, metadata: dict[str, str] | None = None):
        """``metadata``: the strings in every shard's header (default: transformers' ``format: pt``) and,
        besides ``format``, in the index. One key only: the header writes a map's keys in no fixed
        order, and the shards must depend only on their tensors."""
        if metadata is not None and len(metadata) != 1:
            raise ValueError("shard metadata must have exactly one key (its order in the header is not fixed)")
        self.directory, self.prefix = Path(directory), prefix
        self.metadata = metadata or {"format": "pt"}
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self.shards = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        self.shards += 1
        file = f"{self.prefix}-{self.shards:05d}.safetensors"
        tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        save_file(tensors, str(self.directory / file), metadata=self.metadata)
        for name, tensor in tensors.items():
            self.weight_map[name] = file
            self.total += tensor.numel() * tensor.element_size()

    def finish(self) -> Path:
        index = self.directory / f"{self.prefix}.safetensors.index.json"
        extra = {k: v for k, v in self.metadata.items() if k != "format"}
        index.write_text(
            json.dumps({"metadata": {"total_size": self.total, **extra}, "weight_map": self.weight_map}, indent=1)
        )
        return index
