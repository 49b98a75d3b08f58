"""The CPU spMspV kernel: built once per machine with the system C compiler, loaded with ctypes.

``build(isa)`` compiles ``spmspv.c`` into ``$DUOGPT_CACHE/kernels/<hash>/`` (the hash covers
the source, the flags and the compiler) and reuses it afterwards. ``isa`` is 'native'
(AVX-512 or AVX2 where the CPU has them), 'avx2' or 'portable'; tests build all three.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from functools import cache
from pathlib import Path

import torch

from duogpt.errors import UsageError
from duogpt.files import atomic_path, cache_dir
from duogpt.runtime.format import SparseLinear

SOURCE = Path(__file__).with_name("spmspv.c")
X86 = platform.machine().lower() in ("x86_64", "amd64")
ISA_FLAGS = (
    {
        "native": ["-march=native"],
        "avx2": ["-march=x86-64-v3", "-mno-avx512f"],
        "portable": ["-march=x86-64", "-mno-avx2", "-mno-avx512f"],
    }
    if X86
    else {"native": ["-mcpu=native"], "portable": []}
)
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_PAD_BYTES = 64


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise UsageError("no C compiler found (cc, gcc or clang): install one, e.g. apt-get install gcc, or set CC")


@cache
def build(isa: str = "native") -> ctypes.CDLL:
    """Compile (or reuse) the kernel library for ``isa`` and load it."""
    if isa not in ISA_FLAGS:
        raise UsageError(f"unknown kernel ISA {isa!r}: use one of {', '.join(ISA_FLAGS)}")
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    flags = ["-O3", "-fopenmp", "-shared", "-fPIC", *ISA_FLAGS[isa]]
    key = hashlib.sha256((SOURCE.read_text() + " ".join(flags) + version).encode()).hexdigest()[:16]
    lib = cache_dir() / "kernels" / f"{isa}-{key}" / "libduogpt_spmspv.so"
    if not lib.is_file():
        with atomic_path(lib, make_parents=True) as tmp:
            proc = subprocess.run([cc, *flags, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
            if proc.returncode != 0:
                first = (proc.stderr.strip().splitlines() or ["no output"])[0]
                raise UsageError(f"building the CPU kernel with {cc} failed ({first}): check the compiler installation")
    dll = ctypes.CDLL(str(lib))
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    packed = [ptr, ptr, i32, ptr, i64, i64, i64]  # bitmaps, values, dtype code / element size, offsets, n, k, tile
    dll.duogpt_spmspv.restype = dll.duogpt_unpack.restype = ctypes.c_int
    dll.duogpt_spmspv.argtypes = [*packed, ptr, i64, ptr, i32]  # x, batch, y, threads
    dll.duogpt_unpack.argtypes = [*packed, ptr, i32]  # out, threads
    dll.duogpt_spmspv_isa.restype = ctypes.c_char_p
    return dll


def pad_elements(dtype: torch.dtype) -> int:
    """Elements of padding the kernel's vector loads may read past the end of the values."""
    return _PAD_BYTES // dtype.itemsize


def padded_values(values: torch.Tensor) -> torch.Tensor:
    """``values`` followed by the padding: a longer view when its storage already has the room
    (as ``ShardReader.get(..., spare=)`` reads them, zeroed), else a padded copy."""
    pad = pad_elements(values.dtype)
    end = values.storage_offset() + values.numel() + pad
    if (
        values.dim() == 1
        and values.is_contiguous()
        and values.untyped_storage().nbytes() >= end * values.element_size()
    ):
        return values.new_empty(0).set_(values.untyped_storage(), values.storage_offset(), (values.numel() + pad,))
    return torch.cat([values, values.new_zeros(pad)])


def unpack_into(sp: SparseLinear, out: torch.Tensor, threads: int | None = None, isa: str = "native") -> torch.Tensor:
    """The dense weight written into ``out`` as its transpose (k, n) (the values' dtype, every element
    set); returns the (n, k) view. The batched path multiplies by it: ``x @ W^T`` reads the
    transpose as fast as a row-major weight, and writing it is contiguous."""
    n, k = sp.shape
    if out.dtype != sp.values.dtype or out.numel() != n * k or not out.is_contiguous():
        raise UsageError(f"unpack needs a contiguous {sp.values.dtype} buffer of {n * k} elements")
    status = build(isa).duogpt_unpack(
        sp.bitmaps.data_ptr(),
        sp.values.data_ptr(),
        sp.values.element_size(),
        sp.offsets.data_ptr(),
        n,
        k,
        sp.tile_rows,
        out.data_ptr(),
        threads or torch.get_num_threads(),
    )
    if status != 0:
        raise UsageError(f"the CPU unpack refused its arguments (tile rows {sp.tile_rows})")
    return out.view(k, n).T


class CpuSpMSpV:
    """A packed weight ready for the kernel (values padded so vector loads stay in bounds)."""

    def __init__(self, sp: SparseLinear, isa: str = "native", threads: int | None = None, padded=None):
        """``padded``: the values already followed by the padding (``padded_values``), to hold them once."""
        self.sp = sp
        self.dll = build(isa)
        self.values = padded_values(sp.values) if padded is None else padded
        self.threads = threads or torch.get_num_threads()

    @property
    def isa(self) -> str:
        return self.dll.duogpt_spmspv_isa().decode()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``W @ x`` for x of shape (k,) or (batch <= 16, k); returns float32."""
        n, k = self.sp.shape
        xs = x.reshape(-1, k).float().contiguous()
        y = torch.empty(xs.shape[0], n, dtype=torch.float32)
        status = self.dll.duogpt_spmspv(
            self.sp.bitmaps.data_ptr(),
            self.values.data_ptr(),
            _DTYPE_CODES[self.values.dtype],
            self.sp.offsets.data_ptr(),
            n,
            k,
            self.sp.tile_rows,
            xs.data_ptr(),
            xs.shape[0],
            y.data_ptr(),
            self.threads,
        )
        if status != 0:
            raise UsageError(f"the CPU kernel refused its arguments (batch {xs.shape[0]} must be 1..16)")
        return y.reshape(*x.shape[:-1], n)
