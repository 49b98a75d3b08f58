"""The compiled CPU kernel, every instruction-set path and dtype, against dense and the reference."""

from __future__ import annotations

import pytest
import torch

from duogpt.errors import UsageError
from duogpt.runtime.format import pack, spmspv_reference
from duogpt.runtime.kernels.cpu import (
    ISA_FLAGS,
    CpuGroupSpMSpV,
    CpuSpMSpV,
    dense_row,
    retile,
    unpack_into,
    variants_available,
)

TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def problem(n, k, pw, px, dtype, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, k, generator=gen).to(dtype)
    W[torch.rand(n, k, generator=gen) < pw] = 0
    x = torch.randn(batch, k, generator=gen)
    x[torch.rand(batch, k, generator=gen) < px] = 0
    return W, x


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(576, 576), (130, 77), (1, 1), (1000, 33)])
def test_kernel_matches_dense(isa, dtype, shape):
    W, x = problem(*shape, 0.5, 0.5, dtype)
    kernel = CpuSpMSpV(pack(W, tile_rows=128), isa=isa, threads=2)
    expected = x @ W.float().T
    torch.testing.assert_close(kernel(x[0]), expected[0], rtol=TOL[dtype], atol=TOL[dtype] * x.abs().sum())


@pytest.mark.parametrize("tile_rows", [64, 192, 256, 1024])
@pytest.mark.parametrize("pw", [0.0, 0.5, 0.95])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_tile_sizes_and_densities(tile_rows, pw, dtype):
    """Register-blocked tiles (<= 256 rows, last one cut short), the L1 path beyond, full and sparse chunks."""
    W, x = problem(700, 90, pw, 0.3, dtype, seed=1)
    kernel = CpuSpMSpV(pack(W, tile_rows=tile_rows), threads=2)
    torch.testing.assert_close(kernel(x[0]), spmspv_reference(kernel.sp, x[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("px", [0.0, 1.0])
def test_all_active_and_all_zero_inputs(isa, px):
    W, x = problem(256, 100, 0.3, px, torch.float32)
    kernel = CpuSpMSpV(pack(W, tile_rows=64), isa=isa)
    out = kernel(x[0])
    if px == 1.0:
        assert torch.equal(out, torch.zeros(256))
    torch.testing.assert_close(out, W @ x[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("batch", [3, 8])
@pytest.mark.parametrize("tile", [64, 1024])
def test_batch_without_active_columns_is_zero(isa, batch, tile):
    """A batch whose inputs are all zero, or all at or below the kernel's threshold, has no active column: its
    product is zero (the AVX2 batch paths once left the output unwritten, whatever memory held)."""
    W, x = problem(300, 64, 0.5, 0.0, torch.float32, batch=batch)
    kernel = CpuSpMSpV(retile(pack(W, tile_rows=64), tile), isa=isa, threads=2)
    for _ in range(3):  # a product before each, so the output's memory is likely to hold old sums
        assert kernel(x).abs().sum() > 0
        assert torch.equal(kernel(torch.zeros_like(x)), torch.zeros(batch, 300))
        assert torch.equal(kernel(x, threshold=float(x.abs().max())), torch.zeros(batch, 300))


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("batch", [2, 5, 16])
def test_small_batches(isa, batch):
    W, x = problem(300, 64, 0.5, 0.5, torch.bfloat16, batch=batch)
    kernel = CpuSpMSpV(pack(W, tile_rows=128), isa=isa)
    torch.testing.assert_close(kernel(x), x @ W.float().T, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(kernel(x), spmspv_reference(kernel.sp, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("tile", [320, 1024, 4096])
@pytest.mark.parametrize("batch", [3, 16])
def test_small_batches_on_tall_tiles(isa, tile, batch):
    """A batch on a weight re-tiled for batch 1 (strips of thousands of rows) is summed in blocks of
    256 rows, each column's position carried from block to block; the last tile is cut short."""

    W, x = problem(1000, 70, 0.5, 0.5, torch.float32, batch=batch, seed=5)
    sp = retile(pack(W, tile_rows=64), tile)
    torch.testing.assert_close(CpuSpMSpV(sp, isa=isa, threads=2)(x), spmspv_reference(sp, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", [isa for isa in ISA_FLAGS if isa != "portable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [2, 7, 9, 11, 16])
@pytest.mark.parametrize("tile", [64, 1024])
def test_batched_paths_give_the_same_bits(isa, dtype, batch, tile):
    """The AVX2 batch paths (up to 6 rows: columns in groups that stay in L2; 7-16 rows, or fewer by the flag
    1024: panels of 64 columns in L1, passes of 6 batch rows and a rest of 1-5; each group or panel going on
    from the sums so far) add every row's products in the same order as the original batched path (flag 128),
    on a weight wide enough for several groups, 64-row tiles and a strip, the last tile cut short. The AVX2
    build runs them on every x86 machine, whatever the native build takes."""

    W, x = problem(130, 2500, 0.3, 0.2, dtype, batch=batch, seed=batch)
    sp = retile(pack(W, tile_rows=64), tile)
    new, base = CpuSpMSpV(sp, isa=isa, threads=2)(x), CpuSpMSpV(sp, isa=isa, threads=2, variant=128)(x)
    assert torch.equal(new, base)
    for chosen in (128 | 256, 512, 1024, 256 | 512, 1024 | 512, 4 | 128 | 512, 5 | 128):  # the tuner's batch flags
        assert torch.equal(CpuSpMSpV(sp, isa=isa, threads=2, variant=chosen)(x), base), chosen
    torch.testing.assert_close(new, x @ W.float().T, rtol=1e-3, atol=1e-2 * float(x.abs().sum(1).max()) / 100)


def test_dense_weights_fall_back_exactly():
    W, x = problem(200, 50, 0.0, 0.0, torch.float32)
    torch.testing.assert_close(CpuSpMSpV(pack(W))(x[0]), W @ x[0], rtol=1e-5, atol=1e-4)


def test_batch_over_limit_is_refused():
    from duogpt.errors import UsageError

    W, x = problem(64, 8, 0.5, 0.5, torch.float32, batch=17)
    with pytest.raises(UsageError, match="1..16"):
        CpuSpMSpV(pack(W))(x)


def test_input_of_another_width_is_refused_and_shapes_are_kept():
    """The kernel takes (..., k) as it is (no reshape on the decode path), so it checks the width itself: an
    input of another width would be read past its end."""
    from duogpt.errors import UsageError

    W, x = problem(64, 8, 0.5, 0.5, torch.float32, batch=3)
    kernel = CpuSpMSpV(pack(W))
    with pytest.raises(UsageError, match="8 features, not 9"):
        kernel(torch.randn(3, 9))
    assert kernel(x.reshape(3, 1, 8)).shape == (3, 1, 64) and kernel(x[0]).shape == (64,)
    torch.testing.assert_close(kernel(x.reshape(1, 3, 8))[0], kernel(x), rtol=0, atol=0)


def test_missing_compiler_is_a_clear_error(monkeypatch):
    from duogpt.errors import UsageError
    from duogpt.runtime.kernels import cpu

    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(cpu.shutil, "which", lambda name: None)
    with pytest.raises(UsageError, match="no C compiler found"):
        cpu._compiler()


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape, tile", [((200, 70), 64), ((130, 33), 128), ((1, 1), 64), ((576, 96), 256), ((300, 5), 256)]
)
def test_unpack_is_exact(isa, dtype, shape, tile):
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(*shape, generator=gen).to(dtype)
    W[torch.rand(*shape, generator=gen) < 0.5] = 0
    out = torch.full((W.numel() + 8,), 7.0, dtype=dtype)  # every element is written, nothing past the end
    view = unpack_into(pack(W, tile), out[: W.numel()], threads=2, isa=isa)
    assert torch.equal(view, W) and view.shape == W.shape
    assert torch.equal(out[W.numel() :], torch.full((8,), 7.0, dtype=dtype))


def _flags(isa: str) -> list[int]:
    """Every variant compiled for ``isa``, with its flag combinations (16: no vdpbf16ps, 32: no prefetch)."""
    variants, has_dp = variants_available(isa)
    return [v for v in variants if v] + ([1 | 16, 2 | 16] if has_dp else []) + [v | 32 for v in variants if v >= 4]


@pytest.mark.parametrize("isa", [isa for isa in ISA_FLAGS if isa != "portable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tile", [64, 128, 256, 512, 1024, 4096])
@pytest.mark.parametrize("exact_x", [True, False])
def test_every_variant_gives_the_same_bits(isa, dtype, tile, exact_x):
    """All variants sum each row's products in the active columns' order with one rounding per add
    (vdpbf16ps with a zero partner is such an add), so they agree bit for bit, on any tile height,
    bfloat16-exact inputs (the vdpbf16ps path) or not (shift + FMA), and match the reference; on
    the native build and on the AVX2 one (variants 4 and 5 run on both)."""

    W, x = problem(700, 90, 0.5, 0.4, dtype, seed=2)
    x = x[0].to(torch.bfloat16).float() if exact_x else x[0]
    sp = retile(pack(W, tile_rows=64), tile)
    base = CpuSpMSpV(sp, isa=isa, threads=2, variant=0)(x)
    torch.testing.assert_close(base, spmspv_reference(sp, x), rtol=1e-5, atol=1e-5)
    for variant in _flags(isa):
        assert torch.equal(CpuSpMSpV(sp, isa=isa, threads=2, variant=variant)(x), base), variant


@pytest.mark.parametrize("isa", [isa for isa in ISA_FLAGS if isa != "portable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_variants_on_full_empty_and_single_chunks(isa, dtype):
    """Chunks with every row set, none set, one set; a last tile cut short; one active column."""

    gen = torch.Generator().manual_seed(4)
    W = torch.randn(200, 40, generator=gen).to(dtype)
    W[:, :10] = 0  # empty columns
    W[:64, 10:20] = W[:64, 10:20].masked_fill(torch.arange(64)[:, None] % 8 != 3, 0)  # one row per chunk
    for x in (torch.randn(40, generator=gen), torch.eye(40)[15], torch.zeros(40)):
        for tile in (64, 256):
            sp = retile(pack(W, tile_rows=64), tile)
            base = CpuSpMSpV(sp, isa=isa, threads=2, variant=0)(x)
            torch.testing.assert_close(base, x @ W.float().T, rtol=1e-5, atol=1e-4)
            for variant in _flags(isa):
                assert torch.equal(CpuSpMSpV(sp, isa=isa, threads=2, variant=variant)(x), base), (variant, tile)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(700, 90), (64, 3), (1, 5), (2049, 17)])
def test_retile_is_exact_and_reversible(dtype, shape):
    from duogpt.runtime.format import unpack, validate

    W, _ = problem(*shape, 0.6, 0.0, dtype, seed=3)
    sp = pack(W, tile_rows=256)
    for tile in (64, 192, 320, 1024, 4096):
        other = retile(sp, tile)
        validate(other)
        assert other.tile_rows == tile and torch.equal(unpack(other), W)
        back = retile(other, 256)
        for a, b in zip((back.bitmaps, back.values, back.offsets), (sp.bitmaps, sp.values, sp.offsets), strict=True):
            assert torch.equal(a, b)


def test_flush_keeps_the_data():
    from duogpt.runtime.kernels.cpu import flush

    t = torch.arange(10_000, dtype=torch.float32)
    assert flush(t) in (True, False)
    assert torch.equal(t, torch.arange(10_000, dtype=torch.float32))


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("n", [1, 63, 4096, 10_001])
def test_bandwidth_probe_sums_every_element(isa, n):
    from duogpt.runtime.kernels.cpu import stream_sum

    t = torch.arange(n, dtype=torch.float32) % 7  # small integers: every order sums exactly
    assert stream_sum(t, threads=2, isa=isa) == float(t.sum())


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_group_product_gives_each_members_own_bits(isa, dtype, batch):
    """Members of different heights, tile heights and variants side by side in one call: each member's
    columns hold exactly what its own kernel gives (the same tile paths run), for batch 1 and batches."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(batch, 96, generator=gen)
    x[torch.rand(batch, 96, generator=gen) < 0.5] = 0
    shapes = [(300, 0.5, 64, 0), (128, 0.2, 128, 0), (7, 0.9, 64, 0), (1000, 0.5, 256, 0)]
    if isa != "portable":  # a variant on one member, the base path on the others
        shapes[0] = (300, 0.5, 64, _flags(isa)[0])
    kernels = []
    for i, (n, pw, tile, variant) in enumerate(shapes):
        W, _ = problem(n, 96, pw, 0, dtype, seed=10 + i)
        kernels.append(CpuSpMSpV(retile(pack(W, tile_rows=64), tile), isa=isa, threads=2, variant=variant))
    group = CpuGroupSpMSpV(kernels)
    y = group(x)
    assert y.shape == (batch, sum(n for n, *_ in shapes)) and group.cols[-1] == y.shape[1]
    for i, kernel in enumerate(kernels):
        assert torch.equal(y[:, group.cols[i] : group.cols[i + 1]], kernel(x)), i
        torch.testing.assert_close(y[:, group.cols[i] : group.cols[i + 1]], spmspv_reference(kernel.sp, x))


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("batch", [1, 4])
def test_threshold_in_the_kernel_is_the_sparsifier(isa, batch):
    """``kernel(x, t)`` gives the bits of ``kernel(hardshrink(x, t))``: in a batch a column stays active for the
    rows above the threshold and the rows below it count as zeros; a NaN input is kept, as the sparsifier keeps it."""
    W, x = problem(200, 70, 0.5, 0.0, torch.float32, batch=batch, seed=6)
    x[0, 3] = float("nan")
    kernel = CpuSpMSpV(pack(W, tile_rows=64), isa=isa, threads=2)
    for t in (0.0, 0.5, 1.5):
        expected = kernel(torch.nn.functional.hardshrink(x, t) if t else x)
        torch.testing.assert_close(kernel(x, t), expected, rtol=0, atol=0, equal_nan=True)


def test_group_product_refuses_mixed_members():
    W, _ = problem(64, 32, 0.5, 0, torch.float32)
    V, _ = problem(64, 48, 0.5, 0, torch.float32)
    with pytest.raises(UsageError, match="one input width"):
        CpuGroupSpMSpV([CpuSpMSpV(pack(W)), CpuSpMSpV(pack(V))])
    with pytest.raises(UsageError, match="one input width"):
        CpuGroupSpMSpV([CpuSpMSpV(pack(W)), CpuSpMSpV(pack(W.to(torch.bfloat16)))])


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(49, 576), (1, 7), (130, 33), (4, 16), (0, 8)])
@pytest.mark.parametrize("rows", [None, 3, 16])
def test_dense_row_matches_a_float64_product(isa, dtype, shape, rows):
    """Rows in steps of four and a last partial step, widths with a scalar tail past the vector width; one
    input row (a 1-D x) or a batch, every row its own product."""
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(*shape, generator=gen).to(dtype)
    x = torch.randn(*((rows,) if rows else ()), shape[1], generator=gen).to(dtype)
    expected = (x.double() @ W.double().T).float()
    y = dense_row(W, x, threads=2, isa=isa)
    assert y.dtype == torch.float32 and y.shape == (*x.shape[:-1], shape[0])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5 * float(x.double().abs().sum(-1).max()))


def test_dense_row_refuses_what_it_cannot_read():
    W = torch.randn(8, 6)
    with pytest.raises(UsageError, match="contiguous"):
        dense_row(W.T, torch.randn(8))
    with pytest.raises(UsageError, match="inputs of 6 columns"):
        dense_row(W, torch.randn(5))
    with pytest.raises(UsageError, match="inputs of 6 columns"):
        dense_row(W, torch.randn(6, 5))
    with pytest.raises(UsageError, match="contiguous float"):
        dense_row(W.to(torch.float64), torch.randn(6))
