"""Sparse runtime: pruned linears that use the spMspV kernel at decode.

``DualSparseLinear`` is an ``nn.Linear`` (so block detection and the sparsifier hooks keep
working) that also holds its weight in the column-segment format. Inputs with at most
``MAX_KERNEL_ROWS`` rows (decode steps, small batches) go to the CPU kernel, which reads only
the columns whose input is nonzero; longer inputs (prefill) use the dense matmul on the
same masked weights, so both paths compute the same model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from duogpt.errors import UsageError
from duogpt.models import find_blocks
from duogpt.runtime.format import DEFAULT_TILE_ROWS, SparseLinear, pack, validate
from duogpt.runtime.kernels.cpu import CpuSpMSpV
from duogpt.shards import ShardReader

PACKED_PREFIX = "duogpt-sparse"  # shards duogpt-sparse-NNNNN.safetensors and their index
SPARSE_FILE = f"{PACKED_PREFIX}.safetensors"  # the single file of checkpoints written before the shards
MAX_KERNEL_ROWS = 16
RUNTIMES = ("dense", "sparse")


class DualSparseLinear(nn.Linear):
    """A linear with a packed copy of its (pruned) weight for the decode kernel."""

    def __init__(self, linear: nn.Linear, packed: SparseLinear | None = None, tile_rows: int | None = None):
        super().__init__(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",
            dtype=linear.weight.dtype,
        )
        self.weight = linear.weight
        self.bias = linear.bias
        if packed is None:
            packed = pack(linear.weight.data.cpu(), tile_rows or choose_tile_rows(linear.out_features))
        self.kernel = CpuSpMSpV(packed)
        self.use_kernel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if not self.use_kernel or rows > MAX_KERNEL_ROWS or x.device.type != "cpu" or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        y = self.kernel(x.reshape(rows, -1)).to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def choose_tile_rows(n_out: int, threads: int | None = None) -> int:
    """The largest tile (<= 256 rows, whose sums fit in registers) that still gives every thread two tiles."""
    threads = threads or torch.get_num_threads()
    for rows in (DEFAULT_TILE_ROWS, 128):
        if -(-n_out // rows) >= 2 * threads:
            return rows
    return 64


def linears_by_name(model: nn.Module) -> dict[str, tuple[nn.Module, str, nn.Linear]]:
    """'layers.{i}.self_attn.q_proj' -> (parent module, attribute, linear)."""
    _, blocks = find_blocks(model)
    out = {}
    for block in blocks:
        for qual, linear in block.linears().items():
            parent_name, attr = qual.split(".")
            out[f"layers.{block.index}.{qual}"] = (getattr(block.module, parent_name), attr, linear)
    return out


def to_sparse_runtime(model: nn.Module, packed: dict[str, SparseLinear] | None = None) -> nn.Module:
    """Swap every pruned linear of ``model`` for a ``DualSparseLinear`` (in place).

    Call before installing sparsifiers (they hook the linears found at install time).
    """
    for name, (parent, attr, linear) in linears_by_name(model).items():
        if isinstance(linear, DualSparseLinear):
            continue
        sp = None if packed is None else packed.get(name)
        if sp is not None and sp.shape != tuple(linear.weight.shape):
            raise UsageError(
                f"{SPARSE_FILE}: {name} has shape {sp.shape}, the model {tuple(linear.weight.shape)}: "
                "delete the file to rebuild it from the weights"
            )
        setattr(parent, attr, DualSparseLinear(linear, sp))
    return model


def packed_form(linear: nn.Linear) -> SparseLinear:
    """The linear's weight in the column-segment format (the runtime's own copy when it has one)."""
    if isinstance(linear, DualSparseLinear):
        return linear.kernel.sp
    return pack(linear.weight.data.cpu(), choose_tile_rows(linear.out_features))


def load_packed(directory: str | Path) -> dict[str, SparseLinear] | None:
    """Read and validate the packed weights (sharded with an index, or one older single file), if any."""
    directory = Path(directory)
    if (
        not (directory / f"{PACKED_PREFIX}.safetensors.index.json").is_file()
        and not (directory / SPARSE_FILE).is_file()
    ):
        return None
    reader = ShardReader(directory, PACKED_PREFIX)
    out = {}
    for key in reader.weight_map:
        if key.endswith(".meta"):
            name = key[: -len(".meta")]
            try:
                n, k, tile_rows = (int(v) for v in reader.get(key).flatten().tolist())
                arrays = tuple(reader.get(f"{name}.{part}") for part in ("bitmaps", "values", "offsets"))
            except UsageError:  # the reader's own message names the damaged shard
                raise
            except (ValueError, TypeError):
                raise UsageError(
                    f"{directory}: the packed entry for {name} is incomplete or damaged: re-run duogpt prune"
                ) from None
            sp = SparseLinear(*arrays, (n, k), tile_rows)
            validate(sp)
            out[name] = sp
    return out


def use_kernels(model: nn.Module, enabled: bool) -> None:
    """Switch a sparse-runtime model between the kernels and masked dense matmuls."""
    for module in model.modules():
        if isinstance(module, DualSparseLinear):
            module.use_kernel = enabled
