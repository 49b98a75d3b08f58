"""hardware.fast_half_matmul: the one place that says whether half-precision matmuls are native."""

from __future__ import annotations

import torch

from duogpt.hardware import fast_half_matmul


def test_float32_is_always_native():
    assert fast_half_matmul(torch.float32) and fast_half_matmul(torch.float32, "cuda")


def test_cpu_answer_follows_torchs_own_probe():
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    expected = probe is not None and bool(probe())
    assert fast_half_matmul(torch.bfloat16, "cpu") is expected


def test_unknown_devices_keep_their_dtype():
    assert fast_half_matmul(torch.bfloat16, "mps")
