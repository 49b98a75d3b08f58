"""Per-linear decode paths: a packed weight with no zeros to skip is held dense where this CPU measures the
dense product faster, and packed again whenever the packed form is needed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from duogpt.pruning import sparsify
from duogpt.runtime.format import pack
from duogpt.runtime.generate import greedy
from duogpt.runtime.kernels import tune
from duogpt.runtime.linear import (
    DualSparseLinear,
    choose_path,
    decode_paths,
    linears_by_name,
    packed_form,
    to_sparse_runtime,
    use_kernels,
)


@pytest.fixture
def dense_wins(monkeypatch):
    """This CPU 'measures' the dense product faster for every shape asked."""
    asked = []
    monkeypatch.setattr(tune, "dense_faster", lambda n, k, dtype, tile: asked.append((n, k, dtype)) or True)
    return asked


def _linear(n, k, zeros: float, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, k, generator=gen)
    W[torch.rand(n, k, generator=gen) < zeros] = 0
    return W.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_full_weight_is_held_dense_and_computes_the_same(dense_wins, dtype):
    W = _linear(200, 96, 0.0, dtype)
    lin = DualSparseLinear(pack(W, 64))
    packed_bytes = sum(b.numel() * b.element_size() for b in lin.buffers())
    assert choose_path(lin) and lin.held_dense is not None and dense_wins == [(200, 96, dtype)]
    held = sum(b.numel() * b.element_size() for b in lin.buffers())
    assert held <= packed_bytes  # the dense weight is no larger than the packed one was
    assert lin.values.numel() == lin.bitmaps.numel() == 0  # the packed buffers are dropped
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for rows in (1, 4, 16, 40):  # the dense kernel up to 16 rows, one matmul beyond
            x = torch.randn(rows, 96, generator=gen).to(dtype)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(lin(x).float(), F.linear(x.float(), W.float()), rtol=tol, atol=tol)
    assert torch.equal(lin.weight, W)
    stored, expected = packed_form(lin), pack(W, 64)  # what a save writes: the stored layout, packed anew
    assert torch.equal(stored.values, expected.values) and torch.equal(stored.bitmaps, expected.bitmaps)
    assert "dense" in repr(lin)


def test_only_full_weights_on_unsparsified_inputs_are_held_dense(dense_wins):
    half, full = DualSparseLinear(pack(_linear(128, 64, 0.5))), DualSparseLinear(pack(_linear(128, 64, 0.0)))
    assert not choose_path(half) and half.held_dense is None and dense_wins == []  # packed is smaller
    full.sparsifier = sparsify.ActivationSparsifier("x", 0.1)
    assert not choose_path(full) and full.held_dense is None  # its input has zeros for the kernel to skip
    full.sparsifier.threshold = 0.0
    assert choose_path(full)  # a threshold of 0 zeroes nothing


def test_choose_paths_measures_nothing_when_the_kernel_wins(monkeypatch):
    monkeypatch.setattr(tune, "dense_faster", lambda *a: False)
    lin = DualSparseLinear(pack(_linear(128, 64, 0.0)))
    assert not choose_path(lin) and lin.held_dense is None


def test_packed_again_bit_for_bit_when_disabled_or_leaving_the_cpu(dense_wins):
    W = _linear(130, 70, 0.0)
    lin = DualSparseLinear(pack(W, 64))
    before, plan = packed_form(lin), (lin.variant, lin.tile_rows)
    x = torch.randn(1, 70)
    with torch.no_grad():
        kernel_y = lin(x)
        assert choose_path(lin) and lin.held_dense is not None
        assert not choose_path(lin, enabled=False) and lin.held_dense is None
        assert (lin.variant, lin.tile_rows) == plan and torch.equal(lin(x), kernel_y)  # the same plan, same bits
    after = packed_form(lin)
    assert torch.equal(after.values, before.values) and torch.equal(after.offsets, before.offsets)
    choose_path(lin)
    twin = copy.deepcopy(lin)
    assert twin.held_dense is not None and torch.equal(twin.held_dense, W)
    lin.to("meta")  # a move off the CPU takes the packed form the GPU kernels read
    assert lin.held_dense is None and lin.values.device.type == "meta" and lin.tile_rows == 64


def test_a_dense_member_unlinks_its_group_and_the_model_decodes_the_same(samples, dense_wins):
    """An unpruned model in the sparse runtime: every weight full, no sparsifiers. Held dense, q/k/v and
    gate/up are not linked for the group kernel; the tokens are those of the kernels' path."""
    model = tiny_model()
    reference = copy.deepcopy(model)
    to_sparse_runtime(model)  # decode_paths runs inside
    linears = [lin for _, _, lin in linears_by_name(model).values()]
    assert all(lin.held_dense is not None and lin.shared is None for lin in linears)
    prompt = samples[:1, :8]
    tokens = greedy(model, prompt, 12)[0]
    assert tokens == greedy(reference, prompt, 12)[0]
    decode_paths(model, enabled=False)
    assert all(lin.held_dense is None for lin in linears)
    assert model.model.layers[0].self_attn.q_proj.shared is not None  # linked again on the kernel
    assert greedy(model, prompt, 12)[0] == tokens
    use_kernels(model, False)
    assert greedy(model, prompt, 12)[0] == tokens


def test_a_sparsifier_installed_later_moves_the_linear_back_to_the_kernel(samples, dense_wins):
    model = tiny_model()
    to_sparse_runtime(model)
    q = model.model.layers[0].self_attn.q_proj
    assert q.held_dense is not None
    sparsify.install(model, {"layers.0.qkv": 0.05})
    with torch.no_grad():  # still right before decode_paths runs again: the held path applies the sparsifier
        x = torch.randn(1, 1, q.in_features)
        torch.testing.assert_close(q(x), F.linear(sparsify.sparsify(x, 0.05), q.weight), rtol=1e-5, atol=1e-5)
    decode_paths(model)
    assert q.held_dense is None and q.shared is not None
    assert model.model.layers[1].self_attn.q_proj.held_dense is not None  # its input is not sparsified
