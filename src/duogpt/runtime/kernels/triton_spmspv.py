"""The spMspV product as a Triton kernel, on the same column-segment format.

One program per tile of output rows; it walks the active columns, turns the column's
bitmap into per-row flags, finds each row's value by a prefix count of the flags, and
accumulates in float32. Runs on a GPU, or on the CPU under ``TRITON_INTERPRET=1``
(which is how CI tests it).
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


def available() -> bool:
    return triton is not None


def spmspv(sp: SparseLinear, x: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """``W @ x`` for one token (x of shape (k,)), float32 result, with the Triton kernel."""
    if triton is None:
        raise UsageError("the Triton kernel needs the triton package: pip install triton")
    n, k = sp.shape
    device = device or x.device
    xs = x.reshape(k).float().to(device)
    active = (xs != 0).nonzero().flatten().to(torch.int32)
    y = torch.empty(n, dtype=torch.float32, device=device)
    grid = (sp.n_tiles,)
    _spmspv_kernel[grid](
        sp.bitmaps.view(torch.int64).to(device),
        sp.values.to(device),
        sp.offsets.to(device),
        active,
        active.numel(),
        xs,
        y,
        n,
        k,
        TILE=sp.tile_rows,
    )
    return y
