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
    dll.duogpt_spmspv.restype = ctypes.c_int
    dll.duogpt_spmspv.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    dll.duogpt_spmspv_isa.restype = ctypes.c_char_p
    return dll


class CpuSpMSpV:
    """A packed weight ready for the kernel (values padded so vector loads stay in bounds)."""

    def __init__(self, sp: SparseLinear, isa: str = "native", threads: int | None = None):
        self.sp = sp
        self.dll = build(isa)
        pad = _PAD_BYTES // sp.values.element_size()
        self.values = torch.cat([sp.values, sp.values.new_zeros(pad)])
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
