"""The decode cost model against the storage format and against itself."""

from __future__ import annotations

import pytest
import torch

from duogpt.runtime.bench import kernel_bytes
from duogpt.runtime.costmodel import config_cost, decode_cost, sparse_linear_bytes
from duogpt.runtime.format import pack
from duogpt.runtime.kernels.cpu import CpuSpMSpV


@pytest.mark.parametrize("pw, px", [(0.0, 0.0), (0.5, 0.5), (0.7, 0.3)])
def test_sparse_bytes_match_what_the_kernel_reads(pw, px):
    gen = torch.Generator().manual_seed(0)
    n, k = 512, 768
    W = torch.randn(n, k, generator=gen)
    W[torch.rand(n, k, generator=gen) < pw] = 0
    x = torch.randn(k, generator=gen)
    x[torch.rand(k, generator=gen) < px] = 0
    kernel = CpuSpMSpV(pack(W, tile_rows=256))
    exact = kernel_bytes(kernel, x) - x.numel() * 4  # the model ignores the input vector
    p_w = float((W == 0).float().mean())
    p_x = float((x == 0).float().mean())
    assert sparse_linear_bytes(n, k, 4, p_w, p_x, 256) == pytest.approx(exact, rel=0.02)


def test_dense_model_cost_from_weights_equals_cost_from_config(tiny_llama):
    from_model = decode_cost(tiny_llama, context=64, sparse_runtime=False)
    from_config = config_cost(tiny_llama.config, 4, context=64)
    assert from_model.total == pytest.approx(from_config.total)
    assert from_model.attention == pytest.approx(from_config.attention)


def test_speedup_grows_with_sparsity_and_structure(tiny_llama):
    cfg = tiny_llama.config
    dense = config_cost(cfg, 2).total
    light = config_cost(cfg, 2, p_w=0.3, p_x=0.3).total
    heavy = config_cost(cfg, 2, p_w=0.5, p_x=0.5).total
    assert dense > light > heavy
    assert config_cost(cfg, 2, blocks_keep=1).total < dense
    assert config_cost(cfg, 2, mlp_keep=0.5).total < dense
    # the head and the KV cache do not shrink with dual sparsity
    assert config_cost(cfg, 2, p_w=0.5, p_x=0.5).head == config_cost(cfg, 2).head


def test_activation_sparsity_of_a_group_lowers_only_that_group(tiny_llama):
    base = decode_cost(tiny_llama, {}, context=8)
    one = decode_cost(tiny_llama, {"layers.0.down": 0.5}, context=8)
    down = tiny_llama.model.layers[0].mlp.down_proj.weight
    saved = 0.5 * down.shape[1] * (down.numel() / down.shape[1] * 4 + 1 * (256 / 8 + 8))
    assert base.linears - one.linears == pytest.approx(saved)
    assert one.head == base.head and one.attention == base.attention
