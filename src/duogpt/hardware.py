"""What the machine's matmuls can do, asked in one place.

``fast_half_matmul``: whether torch multiplies bfloat16 / float16 matrices natively on this
device. On CPUs without AVX-512 BF16 / FP16 support in oneDNN (AVX2 machines, older Xeons) torch
falls back to a generic loop: measured on a 2-core AMD EPYC with AVX2 only, a 512 x 4096 by
4096 x 4096 bfloat16 product took 0.83 s with the weight row-major (n, k) and 60 s with it
column-major, against 0.19 s in float32. Such machines should compute in float32.
"""

from __future__ import annotations

from functools import cache

import torch


@cache
def fast_half_matmul(dtype: torch.dtype, device_type: str = "cpu") -> bool:
    """Whether a ``dtype`` (bfloat16 or float16) matmul on ``device_type`` runs at least as fast as float32."""
    if dtype not in (torch.bfloat16, torch.float16):
        return True
    if device_type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return True
    name = "_is_mkldnn_bf16_supported" if dtype == torch.bfloat16 else "_is_mkldnn_fp16_supported"
    probe = getattr(torch.ops.mkldnn, name, None)
    try:
        return probe is not None and bool(probe())
    except RuntimeError:
        return False
