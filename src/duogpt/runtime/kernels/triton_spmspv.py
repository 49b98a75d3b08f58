"""The spMspV product and the unpack as Triton kernels, on the same column-segment format.

Product: one program per tile of output rows; it walks the active columns, turns the
column's bitmap into per-row flags, finds each row's value by a prefix count of the flags,
and accumulates in float32. Unpack (the batched path's weight): one program per
(tile, column) segment writes that column's rows of the transposed (k, n) matrix, so its
stores are contiguous. Both run on a GPU, or on the CPU under ``TRITON_INTERPRET=1`` (which
is how CI tests them).
"""

from __future__ import annotations

import torch

from duogpt.errors import UsageError
from duogpt.runtime.format import SparseLinear

try:
    import triton
    import triton.language as tl
except ImportError:  # optional dependency
    triton = None


if triton is not None:

    @triton.jit
    def _spmspv_kernel(bitmaps, values, offsets, active, n_active, x, y, n, k, TILE: tl.constexpr):
        t = tl.program_id(0)
        rows = tl.arange(0, TILE)
        words_per_col = TILE // 64
        acc = tl.zeros((TILE,), dtype=tl.float32)
        for a in range(0, n_active):
            j = tl.load(active + a)
            xj = tl.load(x + j)
            start = tl.load(offsets + t * (k + 1) + j)
            word = tl.load(bitmaps + (t * k + j) * words_per_col + rows // 64)
            flag = ((word >> (rows % 64).to(tl.int64)) & 1).to(tl.int32)
            index = start + tl.cumsum(flag, axis=0) - 1
            vals = tl.load(values + index, mask=flag != 0, other=0.0).to(tl.float32)
            acc += vals * xj
        out = t * TILE + rows
        tl.store(y + out, acc, mask=out < n)

    @triton.jit
    def _unpack_kernel(bitmaps, values, offsets, out, n, k, TILE: tl.constexpr):
        t = tl.program_id(0)
        j = tl.program_id(1)
        rows = tl.arange(0, TILE)
        start = tl.load(offsets + t * (k + 1) + j)
        word = tl.load(bitmaps + (t * k + j) * (TILE // 64) + rows // 64)
        flag = ((word >> (rows % 64).to(tl.int64)) & 1).to(tl.int32)
        index = start + tl.cumsum(flag, axis=0) - 1
        vals = tl.load(values + index, mask=flag != 0, other=0.0)
        r = t * TILE + rows
        tl.store(out + j.to(tl.int64) * n + r, vals, mask=r < n)


def available() -> bool:
    return triton is not None


def _need_triton() -> None:
    if triton is None:
        raise UsageError("the GPU kernels need the triton package: pip install triton")


def spmspv(sp: SparseLinear, x: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """``W @ x`` for x of shape (k,) or (rows, k), float32 result, with the Triton kernel (one launch per row)."""
    _need_triton()
    n, k = sp.shape
    device = device or x.device
    xs = x.reshape(-1, k).float().to(device)
    bitmaps = sp.bitmaps.view(torch.int64).to(device)
    values, offsets = sp.values.to(device), sp.offsets.to(device)
    y = torch.empty(xs.shape[0], n, dtype=torch.float32, device=device)
    for r in range(xs.shape[0]):
        active = (xs[r] != 0).nonzero().flatten().to(torch.int32)
        _spmspv_kernel[(sp.n_tiles,)](
            bitmaps, values, offsets, active, active.numel(), xs[r], y[r], n, k, TILE=sp.tile_rows
        )  # fmt: skip
    return y.reshape(*x.shape[:-1], n)


def unpack_transposed(sp: SparseLinear, out: torch.Tensor) -> torch.Tensor:
    """The dense weight written into ``out`` as its transpose (k, n), every element set; returns the (n, k) view."""
    _need_triton()
    n, k = sp.shape
    if out.dtype != sp.values.dtype or out.numel() != n * k or not out.is_contiguous():
        raise UsageError(f"unpack needs a contiguous {sp.values.dtype} buffer of {n * k} elements")
    _unpack_kernel[(sp.n_tiles, k)](
        sp.bitmaps.view(torch.int64), sp.values, sp.offsets, out, n, k, TILE=sp.tile_rows
    )  # fmt: skip
    return out.view(k, n).T
