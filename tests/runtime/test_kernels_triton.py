"""The Triton kernel against dense (on the CPU through TRITON_INTERPRET=1, or on a GPU)."""

from __future__ import annotations

import pytest
import torch

from duogpt.runtime.format import pack
from duogpt.runtime.kernels import triton_spmspv

pytestmark = pytest.mark.skipif(not triton_spmspv.available(), reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape, tile", [((200, 70), 64), ((130, 33), 128), ((1, 1), 64), ((576, 96), 256)])
def test_triton_matches_dense(dtype, shape, tile):
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(*shape, generator=gen).to(dtype)
    W[torch.rand(*shape, generator=gen) < 0.5] = 0
    x = torch.randn(shape[1], generator=gen)
    x[torch.rand(shape[1], generator=gen) < 0.5] = 0
    y = triton_spmspv.spmspv(pack(W, tile), x, device=DEVICE).cpu()
    torch.testing.assert_close(y, W.float() @ x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("px", [0.0, 1.0])
def test_triton_all_active_and_all_zero(px):
    W = torch.randn(100, 40)
    W[torch.rand(100, 40) < 0.3] = 0
    x = torch.randn(40) if px == 0 else torch.zeros(40)
    y = triton_spmspv.spmspv(pack(W, 64), x, device=DEVICE).cpu()
    torch.testing.assert_close(y, W @ x, rtol=1e-4, atol=1e-4)
