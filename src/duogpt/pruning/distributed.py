"""Several processes (``torchrun``, or ``torch.distributed`` set up by the caller): one prune, split.

Ranks split the calibration chunks (the single-process batches, dealt round-robin, so every
chunk is the same batch as in one process); each carries the streams of its own chunks. The
statistics of a group (H, cross terms, norms, output norms, activation counts) are sums over
chunks and are summed over ranks in float64; the threshold sees exactly the values (or the
seeded sample of them) one process would. The solves of a group's linears are dealt
round-robin and each result is broadcast from the rank that made it. Only rank 0 writes.
With one process every function here is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from duogpt.errors import UsageError


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str) -> bool:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed: run one process, or install a build with it")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def my_chunks(n_chunks: int) -> list[int]:
    rank, size = world()
    return list(range(rank, n_chunks, size))


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor summed over ranks (in place)."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def all_sum_floats(values: list[float]) -> list[float]:
    if world()[1] == 1:
        return values
    return all_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def share(tensor: torch.Tensor, src: int) -> torch.Tensor:
    """``tensor`` as rank ``src`` has it, on every rank (the others pass one of the same shape and dtype)."""
    if world()[1] > 1:
        dist.broadcast(tensor, src)
    return tensor


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def share_object(obj, src: int):
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]
