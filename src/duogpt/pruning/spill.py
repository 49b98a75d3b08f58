"""Per-chunk tensors held from the pass that makes them to the one pass that reads them.

Within a block, a group's inputs are made before they are used: the dense inputs of every
group in one run of the unpruned block, the raw inputs of a group in its threshold pass. In
memory (``ChunkStore(None)``) they wait as tensors. An out-of-core prune passes a folder of its
work directory instead: each chunk is written there as raw bytes when made and read back (and
deleted) when taken, so one chunk is resident at a time rather than all of them. On a 1024-wide
model at 32 x 512 tokens that is about 570 MB less at the widest group; the files stay in the
page cache, which the kernel may drop under pressure and which is not the process's memory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


class ChunkStore:
    """``put`` a tensor under a key, ``take`` it back once (in memory, or through files in ``directory``)."""

    def __init__(self, directory: Path | None = None):
        self.directory, self.items = directory, {}
        if directory is not None:  # files left by an interrupted run are stale
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)

    def put(self, key: str, tensor: torch.Tensor) -> None:
        if self.directory is None:
            self.items[key] = tensor
            return
        flat = tensor.detach().contiguous().cpu().reshape(-1)
        path = self.directory / f"{key}.bin"
        with open(path, "wb") as f:
            f.write(flat.view(torch.uint8).numpy().data)
        self.items[key] = (path, tuple(tensor.shape), tensor.dtype)

    def take(self, key: str) -> torch.Tensor:
        item = self.items.pop(key)
        if self.directory is None:
            return item
        path, shape, dtype = item
        out = torch.empty(shape, dtype=dtype)
        with open(path, "rb") as f:
            if f.readinto(out.reshape(-1).view(torch.uint8).numpy()) != out.numel() * out.element_size():
                raise OSError(f"{path} is shorter than the tensor written to it")
        path.unlink()
        return out

    def close(self) -> None:
        self.items.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
