"""Storage format of a dual-sparse linear, laid out for reading only the active columns.

Output rows are cut into tiles of ``tile_rows`` (a multiple of 64). Within a tile, each
input column ``j`` is one segment: a bitmap of the tile's rows whose weight is nonzero
(``tile_rows / 64`` uint64 words, bit ``r % 64`` of word ``r // 64`` for row ``r``) and
the nonzero values of that column in row order. A decode step with input ``x`` visits, in
every tile, only the segments of columns with ``x_j != 0``, and reads about
``(1 - p_x) * ((1 - p_w) * value_bytes + 1/8)`` bytes per weight.

Arrays (all saved with safetensors):
- ``bitmaps``: uint64, (n_tiles, k, tile_rows // 64)
- ``values``: float32 / float16 / bfloat16, (nnz,), tile-major, then column, then row
- ``offsets``: int64, (n_tiles, k + 1): segment (t, j) is ``values[offsets[t, j]:offsets[t, j + 1]]``
  (``offsets[t, k] == offsets[t + 1, 0]``)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from duogpt.errors import UsageError

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEFAULT_TILE_ROWS = 256


@dataclass
class SparseLinear:
    """A weight matrix (n, k) in the column-segment format."""

    bitmaps: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor
    shape: tuple[int, int]
    tile_rows: int

    @property
    def n_tiles(self) -> int:
        return self.bitmaps.shape[0]

    def nbytes(self) -> int:
        """Bytes of the three arrays (what a kernel may read)."""
        return sum(t.numel() * t.element_size() for t in (self.bitmaps, self.values, self.offsets))

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        meta = torch.tensor([self.shape[0], self.shape[1], self.tile_rows], dtype=torch.int64)
        return {
            f"{prefix}bitmaps": self.bitmaps,
            f"{prefix}values": self.values,
            f"{prefix}offsets": self.offsets,
            f"{prefix}meta": meta,
        }


def _bits_to_words(mask: torch.Tensor) -> torch.Tensor:
    """(..., 64 * w) bool -> (..., w) uint64 with bit i of word w for element 64 w + i."""
    *lead, rows = mask.shape
    bits = mask.reshape(*lead, rows // 64, 64).to(torch.int64)
    weights = torch.ones(64, dtype=torch.int64) << torch.arange(64, dtype=torch.int64)  # bit 63 wraps to sign
    return (bits * weights).sum(-1).view(torch.uint64)


def _words_to_bits(words: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_bits_to_words``: (..., w) uint64 -> (..., 64 w) bool."""
    signed = words.view(torch.int64)
    shifts = torch.arange(64, dtype=torch.int64)
    bits = (signed[..., None] >> shifts) & 1
    return bits.reshape(*words.shape[:-1], -1).bool()


_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


def bit_counts(words: torch.Tensor) -> torch.Tensor:
    """Set bits per row of uint64 words: (..., w) -> (...) int64, one byte lookup per 8 bits (no 64x expansion)."""
    as_bytes = words.contiguous().view(torch.uint8)  # (..., 8 w)
    return _BYTE_POPCOUNT[as_bytes.long()].sum(-1, dtype=torch.int64) if as_bytes.numel() else as_bytes.sum(-1)


def dense_no_larger(n: int, k: int, nnz: int, value_bytes: int) -> bool:
    """Whether an (n, k) weight with ``nnz`` nonzeros takes no more bytes dense than packed (its values plus
    one bitmap bit per weight): at densities of at least 1 - 1 / (8 value_bytes), 15/16 in 16 bits."""
    return n * k * value_bytes <= nnz * value_bytes + n * k / 8


def pack(weight: torch.Tensor, tile_rows: int = DEFAULT_TILE_ROWS) -> SparseLinear:
    """Convert a dense (pruned) weight matrix into the column-segment format."""
    if weight.dim() != 2:
        raise UsageError(f"pack needs a 2-D weight, got shape {tuple(weight.shape)}")
    if weight.dtype not in DTYPES:
        raise UsageError(f"unsupported weight dtype {weight.dtype}: use float32, float16 or bfloat16")
    if tile_rows < 64 or tile_rows % 64:
        raise UsageError(f"tile_rows {tile_rows} must be a positive multiple of 64")
    n, k = weight.shape
    n_tiles = max(1, -(-n // tile_rows))
    padded = torch.zeros(n_tiles * tile_rows, k, dtype=weight.dtype)
    padded[:n] = weight.detach().cpu()
    tiles = padded.view(n_tiles, tile_rows, k).transpose(1, 2)  # (t, k, rows): column segments
    mask = tiles != 0
    bitmaps = _bits_to_words(mask)
    values = tiles[mask].contiguous()  # tile-major, column, row order
    bitmaps = bitmaps.contiguous()
    return SparseLinear(bitmaps, values, segment_offsets(bitmaps), (n, k), tile_rows)


def segment_offsets(bitmaps: torch.Tensor, step: int = 1) -> torch.Tensor:
    """The (n_tiles, k + 1) offsets of the segments the (n_tiles, k, words) bitmaps describe, each
    segment's start rounded up to a multiple of ``step`` elements (1: packed back to back)."""
    n_tiles, k, _ = bitmaps.shape
    counts = bit_counts(bitmaps).reshape(-1)
    if step > 1:
        counts = (counts + step - 1) // step * step
    flat = torch.zeros(n_tiles * k + 1, dtype=torch.int64)
    flat[1:] = counts.cumsum(0)
    return torch.cat([flat[:-1].view(n_tiles, k), flat[k::k].view(n_tiles, 1)], dim=1).contiguous()


def unpack(sp: SparseLinear) -> torch.Tensor:
    """Back to the dense (n, k) matrix (exact)."""
    n, k = sp.shape
    mask = _words_to_bits(sp.bitmaps)  # (t, k, rows)
    tiles = torch.zeros(mask.shape, dtype=sp.values.dtype)
    tiles[mask] = sp.values
    return tiles.transpose(1, 2).reshape(-1, k)[:n].contiguous()


def validate(sp: SparseLinear) -> None:
    """Check that offsets, bitmaps and values agree, before any kernel reads them."""
    n, k = sp.shape
    if n < 1 or k < 1 or sp.tile_rows < 64 or sp.tile_rows % 64:
        raise UsageError(f"sparse weight shape {sp.shape} / tile rows {sp.tile_rows} are invalid: re-export")
    if sp.bitmaps.dtype != torch.uint64 or sp.offsets.dtype != torch.int64:
        raise UsageError("sparse weight bitmaps must be uint64 and offsets int64: re-export the checkpoint")
    words = sp.tile_rows // 64
    n_tiles = max(1, -(-n // sp.tile_rows))
    if sp.bitmaps.shape != (n_tiles, k, words) or sp.offsets.shape != (n_tiles, k + 1):
        raise UsageError(f"sparse weight arrays do not match shape {sp.shape}: re-export the checkpoint")
    if sp.values.dtype not in DTYPES or sp.values.dim() != 1:
        raise UsageError("sparse weight values must be a 1-D float32/float16/bfloat16 array: re-export")
    if not all(t.is_contiguous() for t in (sp.bitmaps, sp.values, sp.offsets)):
        raise UsageError("sparse weight arrays must be contiguous: re-export the checkpoint")
    counts = bit_counts(sp.bitmaps)  # (t, k)
    starts = sp.offsets[:, :-1]
    ends = torch.cat([sp.offsets[:, 1:-1], sp.offsets[:, -1:]], dim=1)
    if int(sp.offsets[0, 0]) != 0 or not torch.equal(ends - starts, counts):
        raise UsageError("sparse weight offsets disagree with the bitmaps: re-export the checkpoint")
    if n_tiles > 1 and not torch.equal(sp.offsets[1:, 0], sp.offsets[:-1, -1]):
        raise UsageError("sparse weight offsets are not contiguous across tiles: re-export the checkpoint")
    if int(sp.offsets[-1, -1]) != sp.values.numel():
        raise UsageError("sparse weight values and offsets disagree in length: re-export the checkpoint")
    pad = n_tiles * sp.tile_rows - n
    if pad and _words_to_bits(sp.bitmaps[-1])[:, sp.tile_rows - pad :].any():
        raise UsageError("sparse weight bitmaps mark rows past the matrix: re-export the checkpoint")


def spmspv_reference(sp: SparseLinear, x: torch.Tensor) -> torch.Tensor:
    """Slow, obvious ``y = W x`` reading only the active columns, segment by segment (float32)."""
    n, k = sp.shape
    xs = x.reshape(-1, k).float()
    y = torch.zeros(xs.shape[0], sp.n_tiles * sp.tile_rows)
    active = (xs != 0).any(0).nonzero().flatten().tolist()
    for t in range(sp.n_tiles):
        rows = t * sp.tile_rows
        for j in active:
            seg = sp.values[int(sp.offsets[t, j]) : int(sp.offsets[t, j + 1])].float()
            where = _words_to_bits(sp.bitmaps[t, j]).nonzero().flatten() + rows
            y[:, where] += xs[:, j : j + 1] * seg[None, :]
    return y[:, :n].reshape(*x.shape[:-1], n)
