"""The column-segment format: exact round trip, validation, and the reference product."""

from __future__ import annotations

import pytest
import torch

from duogpt.errors import UsageError
from duogpt.runtime.format import DTYPES, pack, spmspv_reference, unpack, validate


def pruned(n, k, p, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, k, generator=gen).to(dtype)
    W[torch.rand(n, k, generator=gen) < p] = 0
    return W


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(64, 8), (200, 70), (1, 1), (130, 3)])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0 - 1e-9])
def test_round_trip_is_exact(dtype, shape, p):
    W = pruned(*shape, p, dtype)
    sp = pack(W, tile_rows=64)
    validate(sp)
    assert torch.equal(unpack(sp), W)
    assert sp.values.numel() == int((W != 0).sum())


def test_reference_product_matches_dense():
    W = pruned(300, 90, 0.5, torch.float32)
    x = torch.randn(90)
    x[torch.rand(90) < 0.5] = 0
    torch.testing.assert_close(spmspv_reference(pack(W, 128), x), W @ x, rtol=1e-5, atol=1e-5)


def test_size_shrinks_with_weight_sparsity():
    W = pruned(1024, 512, 0.5, torch.float16)
    sp = pack(W)
    dense_bytes = W.numel() * 2
    assert sp.nbytes() < 0.5 * dense_bytes + W.numel() / 8 + sp.n_tiles * 8 * 513 + 64


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sp: sp.offsets.__setitem__((0, 3), sp.offsets[0, 3] + 1), "offsets disagree"),
        (lambda sp: sp.bitmaps.view(torch.int64).__setitem__((0, 0, 0), -1), "disagree"),
        (lambda sp: setattr(sp, "values", sp.values[:-1]), "disagree in length"),
        (lambda sp: setattr(sp, "offsets", sp.offsets[:, :-1]), "do not match shape"),
        (lambda sp: setattr(sp, "values", sp.values.double()), "float32/float16/bfloat16"),
    ],
)
def test_inconsistent_arrays_are_refused(corrupt, message):
    sp = pack(pruned(100, 20, 0.5, torch.float32), tile_rows=64)
    corrupt(sp)
    with pytest.raises(UsageError, match=message):
        validate(sp)


def test_rows_past_the_matrix_are_refused():
    sp = pack(torch.ones(10, 4), tile_rows=64)
    sp.bitmaps.view(torch.int64)[0, :, 0] |= 1 << 20  # row 20 does not exist
    with pytest.raises(UsageError):
        validate(sp)


def test_bad_pack_arguments():
    with pytest.raises(UsageError, match="multiple of 64"):
        pack(torch.ones(4, 4), tile_rows=100)
    with pytest.raises(UsageError, match="dtype"):
        pack(torch.ones(4, 4, dtype=torch.float64))
