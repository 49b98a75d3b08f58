"""The spMspV product and the unpack as Triton kernels, on the same column-segment format.

Product ``y = W @ x`` for 1-16 rows of ``x``, with no host synchronisation (so a decode step
can be captured in a CUDA graph). The grid is (row tiles, column chunks, row groups): program
(t, s, g) owns output tile t (``TILE`` rows) and input columns ``[s * CHUNK, (s + 1) * CHUNK)``.
It finds the chunk's active columns (``x_j != 0`` in any of its rows): with ``COMPACT`` it
compacts their indices first (a prefix count, through a small scratch row), otherwise it walks
every column of the chunk and masks the inactive ones. Then, ``COLS`` active columns at a time,
it finds each flagged row's value in the column's segment and loads only those:

- one row: the bitmap is read as 32-bit halves; row r's value is at ``offsets[t, j]`` + the set
  bits of the halves before its half + ``popc(half & ((1 << (r % 32)) - 1))``; each thread keeps
  ``R`` rows of one column, and the products stay per column in registers until the end;
- a group of rows: the position is a prefix count of the flags along the tile, and the chunk's
  values are multiplied with the group's inputs by one ``tl.dot`` (read once for the group;
  float32 operands for float32 weights).

Partial sums of the chunks go to ``y`` (float32, zeroed) by atomic adds. A linear's nonzeros
are indexed in int32 (fewer than 2^31 per linear: any shape up to 46k x 46k).

Unpack (the batched path's weight): one program per (tile, column) segment writes that
column's rows of the transposed (k, n) matrix, so its stores are contiguous.

Both run on a GPU, or on the CPU under ``TRITON_INTERPRET=1`` (which is how CI tests them; the
popcount is then a bit-parallel sum, the hardware ``popc`` being a GPU instruction).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from duogpt.errors import UsageError
from duogpt.runtime.format import SparseLinear

try:
    import triton
    import triton.language as tl
except ImportError:  # optional dependency
    triton = None

CONFIG_ENV = "DUOGPT_GPU_CONFIG"  # "cols,chunk,warps,compact,rows_per_thread" overrides the choice below (benchmarks)
MAX_GROUP = 16  # rows one program multiplies at once (tl.dot's smallest M)


@dataclass(frozen=True)
class Config:
    """Launch shape of the product kernel: active columns per step, columns per program, warps, compaction,
    rows of a column each thread decodes (one row)."""

    cols: int = 16
    chunk: int = 256
    warps: int = 4
    compact: bool = True
    rows_per_thread: int = 1

    def __str__(self) -> str:
        return f"{self.cols},{self.chunk},{self.warps},{int(self.compact)},{self.rows_per_thread}"

    @classmethod
    def parse(cls, text: str) -> Config:
        try:
            cols, chunk, warps, compact, rpt = (int(v) for v in text.split(","))
        except ValueError:
            expected = "expected cols,chunk,warps,compact,rows_per_thread, e.g. 16,256,4,1,2"
            raise UsageError(f"{CONFIG_ENV}={text!r}: {expected}") from None
        for name, v in (("cols", cols), ("chunk", chunk), ("warps", warps), ("rows_per_thread", rpt)):
            if v < 1 or v & (v - 1):
                raise UsageError(f"{CONFIG_ENV}: {name} {v} must be a power of two")
        if cols > chunk or cols < 16:
            raise UsageError(f"{CONFIG_ENV}: cols {cols} must be at least 16 and at most chunk {chunk}")
        if rpt > 32:
            raise UsageError(f"{CONFIG_ENV}: rows_per_thread {rpt} must be at most 32")
        return cls(cols, chunk, warps, bool(compact), rpt)


# per stored tile height: the fastest launch shape over the three Llama-2-7B shapes at 50/50 on an H200
# (docs/bench-gpu.md, the sweep of `duogpt bench gpu`)
DEFAULT_CONFIGS = {
    64: Config(32, 256, 4, True, 16),
    128: Config(16, 128, 4, True, 32),
    256: Config(16, 128, 4, True, 1),
}

if triton is not None:
    from triton.language.extra import libdevice

    @triton.jit
    def _popcount(v, HW_POPC: tl.constexpr):
        """Set bits of each uint32: the hardware count on a GPU, a bit-parallel sum under the interpreter."""
        if HW_POPC:
            c = libdevice.popc(v.to(tl.int32, bitcast=True))
        else:
            v = v - ((v >> 1) & 0x55555555)
            v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
            v = (v + (v >> 4)) & 0x0F0F0F0F
            c = ((v * 0x01010101) >> 24).to(tl.int32)
        return c

    @triton.jit
    def _row_product(
        bitmaps, values, offsets, j, live, xj, t, k, TILE: tl.constexpr, R: tl.constexpr, HW_POPC: tl.constexpr
    ):  # fmt: skip
        """One row: W[tile t, columns j] * xj as (R, COLS, TILE // 32, 32 // R) float32, summed over the columns
        later. Row ``32 h + (32 // R) i + b`` of the tile is element (i, c, h, b): the leading axis of R stays
        in one thread (its column's words and start are found once for R rows), the last runs across lanes.

        Each column's bitmap is read as 32-row halves; a half's first value sits at the segment start plus
        the bits of the halves before it, a row's at that plus the bits below it in its half (a count).
        """
        HALVES: tl.constexpr = TILE // 32
        LANES: tl.constexpr = 32 // R
        halves = tl.load(
            bitmaps + ((t * k + j) * HALVES)[:, None] + tl.arange(0, HALVES)[None, :], mask=live[:, None], other=0
        ).to(tl.uint32, bitcast=True)  # (COLS, HALVES)
        counts = _popcount(halves, HW_POPC)
        start = tl.load(offsets + t * (k + 1) + j, mask=live, other=0).to(tl.int32)
        base = (start[:, None] + tl.cumsum(counts, axis=1) - counts)[None, :, :, None]
        bit = (tl.arange(0, R)[:, None] * LANES + tl.arange(0, LANES)[None, :]).to(tl.uint32)  # (R, LANES)
        below = ((tl.full((R, LANES), 1, tl.uint32) << bit) - 1)[:, None, None, :]
        word = halves[None, :, :, None]
        index = base + _popcount(word & below, HW_POPC)
        flag = ((word >> bit[:, None, None, :]) & 1) != 0
        vals = tl.load(values + index, mask=flag, other=0.0)
        return vals.to(tl.float32) * xj[None, :, None, None].to(tl.float32)

    @triton.jit
    def _group_product(
        bitmaps, values, offsets, j, live, xj, t, k, TILE: tl.constexpr, WIDE_DOT: tl.constexpr
    ):  # fmt: skip
        """A group of rows: xj (GROUP, COLS) @ W[tile t, columns j] (COLS, TILE) as one ``tl.dot``, each
        row's value found by a prefix count of the flags along the tile."""
        rows = tl.arange(0, TILE)
        start = tl.load(offsets + t * (k + 1) + j, mask=live, other=0)
        at = ((t * k + j) * (TILE // 32))[:, None] + (rows // 32)[None, :]
        word = tl.load(bitmaps + at, mask=live[:, None], other=0)
        flag = ((word >> (rows % 32)[None, :]) & 1).to(tl.int32)
        index = start[:, None] + tl.cumsum(flag, axis=1) - 1
        vals = tl.load(values + index, mask=flag != 0, other=0.0)
        if WIDE_DOT:
            part = tl.dot(xj.to(tl.float32), vals.to(tl.float32), input_precision="ieee")
        else:
            part = tl.dot(xj.to(vals.dtype), vals)
        return part  # one return: Triton types every return of a function alike, even in untaken branches

    @triton.jit
    def _x_block(x, j, live, grow, rows_x, k, GROUP: tl.constexpr):
        """x[rows of the group, columns j]: (COLS,) for one row, (GROUP, COLS) for a group."""
        if GROUP == 1:
            block = tl.load(x + grow * k + j, mask=live, other=0.0)
        else:
            r = grow * GROUP + tl.arange(0, GROUP)
            block = tl.load(x + r[:, None] * k + j[None, :], mask=(r < rows_x)[:, None] & live[None, :], other=0.0)
        return block

    @triton.jit
    def _column_live(x, j, inside, grow, rows_x, k, GROUP: tl.constexpr):
        """Whether column j is nonzero in any row of the group (and inside the chunk)."""
        if GROUP == 1:
            live = inside & (tl.load(x + grow * k + j, mask=inside, other=0.0) != 0)
        else:
            r = grow * GROUP + tl.arange(0, GROUP)
            xs = tl.load(x + r[:, None] * k + j[None, :], mask=(r < rows_x)[:, None] & inside[None, :], other=0.0)
            live = tl.max((xs != 0).to(tl.int32), axis=0) != 0
        return live

    @triton.jit
    def _step(
        acc, bitmaps, values, offsets, x, j, live, grow, rows_x, t, k,
        TILE: tl.constexpr, GROUP: tl.constexpr, WIDE_DOT: tl.constexpr, R: tl.constexpr, HW_POPC: tl.constexpr,
    ):  # fmt: skip
        """acc plus the products of columns j (those flagged live)."""
        xj = _x_block(x, j, live, grow, rows_x, k, GROUP)
        if GROUP == 1:
            acc += _row_product(bitmaps, values, offsets, j, live, xj, t, k, TILE, R, HW_POPC)
        else:
            acc += _group_product(bitmaps, values, offsets, j, live, xj, t, k, TILE, WIDE_DOT)
        return acc

    @triton.jit
    def _spmspv_kernel(
        bitmaps, values, offsets, x, y, scratch, n, k, rows_x,
        TILE: tl.constexpr, CHUNK: tl.constexpr, COLS: tl.constexpr, GROUP: tl.constexpr, COMPACT: tl.constexpr,
        WIDE_DOT: tl.constexpr, R: tl.constexpr, HW_POPC: tl.constexpr,
    ):  # fmt: skip
        t, s, grow = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        if GROUP == 1:
            acc = tl.zeros((R, COLS, TILE // 32, 32 // R), dtype=tl.float32)  # no reduction inside the loop
        else:
            acc = tl.zeros((GROUP, TILE), dtype=tl.float32)
        count = tl.full((), 0, tl.int32)
        if COMPACT:
            cols = s * CHUNK + tl.arange(0, CHUNK)
            live = _column_live(x, cols, cols < k, grow, rows_x, k, GROUP)
            slot = scratch + ((grow * tl.num_programs(1) + s) * tl.num_programs(0) + t) * CHUNK
            tl.store(slot + tl.cumsum(live.to(tl.int32), axis=0) - 1, cols, mask=live)
            count = tl.sum(live.to(tl.int32), axis=0)
            tl.debug_barrier()  # the scratch row is written by every thread of the program, read by others
            for a0 in range(0, count, COLS):
                a = a0 + tl.arange(0, COLS)
                j = tl.load(slot + a, mask=a < count, other=0)
                acc = _step(acc, bitmaps, values, offsets, x, j, a < count, grow, rows_x, t, k, TILE, GROUP,
                            WIDE_DOT, R, HW_POPC)  # fmt: skip
        else:
            for c0 in range(0, CHUNK, COLS):
                j = s * CHUNK + c0 + tl.arange(0, COLS)
                live = _column_live(x, j, j < k, grow, rows_x, k, GROUP)
                acc = _step(acc, bitmaps, values, offsets, x, j, live, grow, rows_x, t, k, TILE, GROUP,
                            WIDE_DOT, R, HW_POPC)  # fmt: skip
                count += tl.sum(live.to(tl.int32), axis=0)
        if count > 0:  # a chunk with no active column adds nothing
            if GROUP == 1:
                i = tl.arange(0, R)[:, None, None] * (32 // R) + tl.arange(0, 32 // R)[None, None, :]
                out = t * TILE + tl.arange(0, TILE // 32)[None, :, None] * 32 + i
                tl.atomic_add(y + grow * n + out, tl.sum(acc, axis=1), mask=out < n, sem="relaxed")
            else:
                out = t * TILE + tl.arange(0, TILE)
                r = grow * GROUP + tl.arange(0, GROUP)
                mask = (r < rows_x)[:, None] & (out < n)[None, :]
                tl.atomic_add(y + r[:, None] * n + out[None, :], acc, mask=mask, sem="relaxed")

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


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _wide_dot(dtype: torch.dtype) -> bool:
    """Group products in float32: for float32 weights, and for bfloat16 under the interpreter (whose
    bfloat16 ``tl.dot`` is wrong); half-precision weights on a GPU use the tensor cores."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and _interpreting())


def choose_config(sp: SparseLinear) -> Config:
    """``DUOGPT_GPU_CONFIG`` if set, else the launch shape for the stored tile height (``DEFAULT_CONFIGS``),
    its chunks narrowed so a small weight still gives the GPU about 512 programs (four per multiprocessor)."""
    text = os.environ.get(CONFIG_ENV)
    if text:
        return Config.parse(text)
    base = DEFAULT_CONFIGS.get(sp.tile_rows, DEFAULT_CONFIGS[256])
    n_tiles, k = sp.n_tiles, sp.shape[1]
    chunk = base.chunk
    while chunk > max(64, base.cols) and n_tiles * -(-k // chunk) < 512:
        chunk //= 2
    return replace(base, chunk=chunk)


def spmspv(
    sp: SparseLinear, x: torch.Tensor, device: str | torch.device | None = None, config: Config | None = None
) -> torch.Tensor:
    """``W @ x`` for x of shape (k,) or (rows, k), rows <= 16; float32 result; one launch, no host sync."""
    _need_triton()
    n, k = sp.shape
    device = device or x.device
    xs = x.reshape(-1, k).to(device).contiguous()
    rows = xs.shape[0]
    if sp.tile_rows & (sp.tile_rows - 1):
        raise UsageError(f"the GPU kernels take tiles of 64, 128, 256... rows, not {sp.tile_rows}: re-export")
    if rows > MAX_GROUP:
        raise UsageError(f"the GPU product takes at most {MAX_GROUP} rows, got {rows}: use the batched path")
    if sp.values.numel() >= 2**31:
        raise UsageError(f"a linear of {sp.values.numel()} nonzeros is past the GPU kernel's int32 index: split it")
    config = config or choose_config(sp)
    group = 1 if rows == 1 else MAX_GROUP
    grid = (sp.n_tiles, -(-k // config.chunk), 1)  # one group: rows <= MAX_GROUP
    y = torch.zeros(rows, n, dtype=torch.float32, device=device)
    slots = grid[0] * grid[1] * config.chunk if config.compact else 1  # a scratch row per program
    scratch = torch.empty(slots, dtype=torch.int32, device=device)
    _spmspv_kernel[grid](
        sp.bitmaps.view(torch.int32).to(device), sp.values.to(device), sp.offsets.to(device), xs, y, scratch,
        n, k, rows, TILE=sp.tile_rows, CHUNK=config.chunk, COLS=config.cols, GROUP=group, COMPACT=config.compact,
        WIDE_DOT=_wide_dot(sp.values.dtype), R=config.rows_per_thread,
        HW_POPC=not _interpreting(), num_warps=config.warps,
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
