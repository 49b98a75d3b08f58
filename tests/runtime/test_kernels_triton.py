"""The Triton kernels against dense (on the CPU through TRITON_INTERPRET=1, or on a GPU)."""

from __future__ import annotations

import pytest
import torch

from duogpt.errors import UsageError
from duogpt.runtime.format import pack
from duogpt.runtime.kernels import triton_spmspv
from duogpt.runtime.kernels.triton_spmspv import Config

pytestmark = pytest.mark.skipif(not triton_spmspv.available(), reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAUNCH_SHAPES = [Config(16, 64, 4, True, 1), Config(16, 64, 4, False, 8), Config(32, 128, 8, True, 32)]


def problem(shape, rows, dtype, pw=0.5, px=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(*shape, generator=gen).to(dtype)
    W[torch.rand(*shape, generator=gen) < pw] = 0
    x = torch.randn(rows, shape[1], generator=gen).to(dtype)
    x[torch.rand(rows, shape[1], generator=gen) < px] = 0
    return W, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape, tile", [((200, 70), 64), ((130, 33), 128), ((1, 1), 64), ((576, 300), 256)])
@pytest.mark.parametrize("config", LAUNCH_SHAPES, ids=lambda c: str(c).replace(",", "-"))
def test_triton_matches_dense(dtype, shape, tile, config):
    W, x = problem(shape, 1, dtype)
    y = triton_spmspv.spmspv(pack(W, tile), x[0], device=DEVICE, config=config).cpu()
    torch.testing.assert_close(y, W.float() @ x[0].float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [2, 5, 16])
@pytest.mark.parametrize("config", LAUNCH_SHAPES, ids=lambda c: str(c).replace(",", "-"))
def test_triton_rows_match_dense(dtype, rows, config):
    """A group of rows shares each chunk's values (a tl.dot): columns active in any row are visited."""
    W, x = problem((200, 150), rows, dtype, px=0.7)
    y = triton_spmspv.spmspv(pack(W, 64), x, device=DEVICE, config=config).cpu()
    # half-precision products round x to the weight's type, as the kernel's tensor-core product does
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y, x.float() @ W.float().T, rtol=tol, atol=tol)


@pytest.mark.parametrize("px", [0.0, 1.0])
@pytest.mark.parametrize("config", LAUNCH_SHAPES, ids=lambda c: str(c).replace(",", "-"))
def test_triton_all_active_and_all_zero(px, config):
    W = torch.randn(100, 40)
    W[torch.rand(100, 40) < 0.3] = 0
    x = torch.randn(40) if px == 0 else torch.zeros(40)
    y = triton_spmspv.spmspv(pack(W, 64), x, device=DEVICE, config=config).cpu()
    torch.testing.assert_close(y, W @ x, rtol=1e-4, atol=1e-4)


def test_triton_chunks_span_many_programs():
    """More columns than one chunk and more rows than one tile: every (tile, chunk) program adds its part."""
    W, x = problem((300, 700), 1, torch.float32, pw=0.3, px=0.4)
    y = triton_spmspv.spmspv(pack(W, 64), x, device=DEVICE, config=Config(16, 64, 4, True)).cpu()
    torch.testing.assert_close(y[0], W @ x[0], rtol=1e-4, atol=1e-4)


def test_triton_refuses_more_rows_than_a_group_and_odd_tiles():
    W, x = problem((64, 32), 17, torch.float32)
    with pytest.raises(UsageError, match="at most 16 rows"):
        triton_spmspv.spmspv(pack(W, 64), x, device=DEVICE)
    with pytest.raises(UsageError, match="not 192"):
        triton_spmspv.spmspv(pack(W, 192), x[0], device=DEVICE)


def test_default_config_and_override(monkeypatch):
    monkeypatch.delenv(triton_spmspv.CONFIG_ENV, raising=False)
    sp = pack(torch.randn(4096, 4096), 256)
    default = triton_spmspv.DEFAULT_CONFIGS[256]
    assert triton_spmspv.choose_config(sp) == default  # 16 tiles x 32 chunks of 128: 512 programs
    small = triton_spmspv.choose_config(pack(torch.randn(576, 576), 64))
    assert (small.chunk, small.rows_per_thread) == (64, triton_spmspv.DEFAULT_CONFIGS[64].rows_per_thread)
    monkeypatch.setenv(triton_spmspv.CONFIG_ENV, "32,512,8,0,4")
    assert triton_spmspv.choose_config(sp) == Config(32, 512, 8, False, 4)
    for bad in ("32,512,8,1", "24,512,8,1,1", "8,512,8,1,1", "64,32,4,1,1", "16,64,4,1,3", "16,64,4,1,64"):
        monkeypatch.setenv(triton_spmspv.CONFIG_ENV, bad)
        with pytest.raises(UsageError, match=triton_spmspv.CONFIG_ENV):
            triton_spmspv.choose_config(sp)
