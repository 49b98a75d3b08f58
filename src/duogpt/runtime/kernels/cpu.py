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
from duogpt.runtime.format import SparseLinear, bit_counts, segment_offsets

SOURCES = [Path(__file__).with_name(name) for name in ("spmspv.c", "variants.c", "avx2.c", "dense.c", "common.h")]
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
VARIANT_COUNT = 6  # common.h
VARIANT_NO_DP, VARIANT_NO_PF, VARIANT_PF_HEAD = 16, 32, 64  # common.h's flags: batch-1 paths
VARIANT_BATCH_BASE, VARIANT_FEW_REGS, VARIANT_MANY_PANELS, VARIANT_FEW_PANELS = 128, 256, 512, 1024  # batches
BATCH_FLAGS = VARIANT_BATCH_BASE | VARIANT_FEW_REGS | VARIANT_MANY_PANELS | VARIANT_FEW_PANELS


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise UsageError("no C compiler found (cc, gcc or clang): install one, e.g. apt-get install gcc, or set CC")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor()


def _cpu_identity() -> str:
    """The CPU's model and feature flags: a -march=native build is only valid on such a CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor()


@cache
def build(isa: str = "native") -> ctypes.CDLL:
    """Compile (or reuse) the kernel library for ``isa`` and load it."""
    if isa not in ISA_FLAGS:
        raise UsageError(f"unknown kernel ISA {isa!r}: use one of {', '.join(ISA_FLAGS)}")
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    flags = ["-O3", "-fopenmp", "-shared", "-fPIC", *ISA_FLAGS[isa]]
    text = "".join(path.read_text() for path in SOURCES) + (_cpu_identity() if isa == "native" else "")
    key = hashlib.sha256((text + " ".join(flags) + version).encode()).hexdigest()[:16]
    lib = library_dir(isa, key) / "libduogpt_spmspv.so"
    if not lib.is_file():
        with atomic_path(lib, make_parents=True) as tmp:
            sources = [str(path) for path in SOURCES if path.suffix == ".c"]
            proc = subprocess.run([cc, *flags, *sources, "-o", str(tmp)], capture_output=True, text=True)
            if proc.returncode != 0:
                first = (proc.stderr.strip().splitlines() or ["no output"])[0]
                raise UsageError(f"building the CPU kernel with {cc} failed ({first}): check the compiler installation")
    dll = ctypes.CDLL(str(lib))
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    packed = [ptr, ptr, i32, ptr, i64, i64, i64]  # bitmaps, values, dtype code / element size, offsets, n, k, tile
    dll.duogpt_spmspv_group.restype = dll.duogpt_unpack.restype = ctypes.c_int
    # members, count, dtype code, k, x, batch, threshold, y, y's row stride, threads
    dll.duogpt_spmspv_group.argtypes = [ptr, i32, i32, i64, ptr, i64, ctypes.c_float, ptr, i64, i32]
    dll.duogpt_unpack.argtypes = [*packed, ptr, i32]  # out, threads
    dll.duogpt_dense_row.restype = ctypes.c_int
    dll.duogpt_dense_row.argtypes = [ptr, i32, i64, i64, ptr, i64, ptr, i32]  # weight, dtype, n, k, x, rows, y, threads
    dll.duogpt_spmspv_isa.restype = ctypes.c_char_p
    dll.duogpt_retile_values.restype = dll.duogpt_flush.restype = dll.duogpt_variants.restype = ctypes.c_int
    dll.duogpt_retile_values.argtypes = [ptr, ptr, i32, ptr, i64, i64, i64, ptr, i64, i64, ptr, i32]
    dll.duogpt_flush.argtypes = [ptr, i64]
    dll.duogpt_variants.argtypes = []
    dll.duogpt_stream_sum.restype = ctypes.c_double
    dll.duogpt_stream_sum.argtypes = [ptr, i64, i32]
    dll.directory = str(lib.parent)
    return dll


def library_dir(isa: str, key: str) -> Path:
    """Where the library built for ``isa`` from sources hashing to ``key`` lives (the tuner's cache too)."""
    return cache_dir() / "kernels" / f"{isa}-{key}"


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


_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
HUGE_PAGES = platform.system() == "Linux"


def huge_empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor whose pages are advised as transparent huge pages (Linux, large tensors):
    the kernel jumps between column segments, and with 4 KiB pages nearly every jump misses the TLB.
    The advice must precede the first write, so this is for buffers about to be filled."""
    size = torch.empty(0, dtype=dtype).element_size()
    if not HUGE_PAGES or numel * size < 2 * _HUGE:
        return torch.empty(numel, dtype=dtype)
    slack = _HUGE // size
    buf = torch.empty(numel + slack, dtype=dtype)
    start = -(-buf.data_ptr() // _HUGE) * _HUGE
    length = (buf.data_ptr() + buf.numel() * size - start) // _HUGE * _HUGE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_HUGEPAGE)  # advice only: ignore refusal
    first = (start - buf.data_ptr()) // size
    return buf[first : first + numel]


def retile(
    sp: SparseLinear, tile_rows: int, align: int = 0, threads: int | None = None, isa: str = "native"
) -> SparseLinear:
    """The same weight with tiles of ``tile_rows`` rows (a multiple of 64): bitmaps regrouped, offsets
    recounted, values copied segment by segment (no dense copy), into huge-page-advised memory with
    the kernel's padding. ``align`` (bytes, 0: none): every segment starts on such a boundary, so a
    segment's reads share no cache line with its neighbours (a run-time layout: offsets then leave
    gaps, which ``validate`` refuses on disk and every kernel and ``retile`` accept).
    Exact: ``unpack(retile(sp, t, a)) == unpack(sp)``."""
    if tile_rows < 64 or tile_rows % 64:
        raise UsageError(f"tile_rows {tile_rows} must be a positive multiple of 64")
    n, k = sp.shape
    wi, wo = sp.tile_rows // 64, tile_rows // 64
    tiles_out = max(1, -(-n // tile_rows))
    words = sp.bitmaps.view(torch.int64).permute(1, 0, 2).reshape(k, -1)  # (k, 64-row words), zeros past n
    have, need = words.shape[1], tiles_out * wo
    words = torch.cat([words, words.new_zeros(k, need - have)], 1) if need > have else words[:, :need]
    grouped = words.reshape(k, tiles_out, wo).permute(1, 0, 2)
    bitmaps = huge_empty(grouped.numel(), torch.int64).view(grouped.shape).copy_(grouped).view(torch.uint64)
    step = max(1, align // sp.values.element_size())
    offsets = segment_offsets(bitmaps, step)
    total = int(offsets[-1, -1])
    values = huge_empty(total + pad_elements(sp.values.dtype), sp.values.dtype)
    values[total:] = 0
    status = build(isa).duogpt_retile_values(
        sp.bitmaps.data_ptr(),
        sp.values.data_ptr(),
        sp.values.element_size(),
        sp.offsets.data_ptr(),
        k,
        wi,
        sp.n_tiles,
        offsets.data_ptr(),
        wo,
        tiles_out,
        values.data_ptr(),
        threads or torch.get_num_threads(),
    )
    if status != 0 or int(bit_counts(bitmaps).sum()) != int(bit_counts(sp.bitmaps).sum()):
        raise UsageError(f"re-tiling a {n}x{k} packed weight to {tile_rows} rows failed: re-export the checkpoint")
    return SparseLinear(bitmaps, values[:total], offsets, (n, k), tile_rows)


def dense_row(weight: torch.Tensor, x: torch.Tensor, threads: int | None = None, isa: str = "native") -> torch.Tensor:
    """``x @ weight.T`` for a contiguous (n, k) weight (float32, float16 or bfloat16) and inputs ``x`` of shape
    (..., k) (any float dtype; meant for a few rows); float32 (..., n). The dense decode product at the memory
    bandwidth (dense.c): each weight row is read from memory once for all rows of ``x``."""
    n, k = weight.shape
    if not weight.is_contiguous() or weight.dtype not in _DTYPE_CODES or x.dim() < 1 or x.shape[-1] != k:
        raise UsageError(f"dense_row needs a contiguous float (n, k) weight and inputs of {k} columns")
    xs = x.reshape(-1, k)
    if xs.dtype != torch.float32 or not xs.is_contiguous():
        xs = xs.float().contiguous()
    y = torch.empty(xs.shape[0], n, dtype=torch.float32)
    code = _DTYPE_CODES[weight.dtype]
    threads = threads or torch.get_num_threads()
    if xs.shape[0]:
        build(isa).duogpt_dense_row(weight.data_ptr(), code, n, k, xs.data_ptr(), xs.shape[0], y.data_ptr(), threads)
    return y.view(*x.shape[:-1], n)


def stream_sum(t: torch.Tensor, threads: int | None = None, isa: str = "native") -> float:
    """Sum of a contiguous float32 tensor, read as fast as the machine allows (the bandwidth probe)."""
    return build(isa).duogpt_stream_sum(t.data_ptr(), t.numel(), threads or torch.get_num_threads())


def flush(*tensors: torch.Tensor, isa: str = "native") -> bool:
    """Evict the tensors' memory from the CPU caches; False where the CPU cannot."""
    dll = build(isa)
    return all(dll.duogpt_flush(t.data_ptr(), t.numel() * t.element_size()) == 0 for t in tensors)


def variants_available(isa: str = "native") -> tuple[list[int], bool]:
    """(kernel variants compiled for ``isa``, whether vdpbf16ps is available)."""
    mask = build(isa).duogpt_variants()
    return [v for v in range(VARIANT_COUNT) if mask >> v & 1], bool(mask & VARIANT_NO_DP)


class _Member(ctypes.Structure):
    """common.h's ``duogpt_member``: one linear of a group product."""

    _fields_ = [
        ("bitmaps", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("offsets", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("tile_rows", ctypes.c_int64),
        ("col0", ctypes.c_int64),
        ("variant", ctypes.c_int),
    ]


def _product(dll, fixed: tuple, x: torch.Tensor, threshold: float, total: int, threads: int) -> torch.Tensor:
    """One call of ``duogpt_spmspv_group`` (``fixed``: members, count, dtype code, k) on an input of shape
    (..., k) with at most 16 rows; float32 output of shape (..., total), no reshape on either side."""
    k = fixed[3]
    if x.shape[-1] != k:
        raise UsageError(f"the CPU kernel multiplies inputs of {k} features, not {x.shape[-1]}")
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.float().contiguous()
    rows = x.numel() // k
    y = torch.empty(*x.shape[:-1], total, dtype=torch.float32)
    if dll.duogpt_spmspv_group(*fixed, x.data_ptr(), rows, threshold, y.data_ptr(), total, threads) != 0:
        raise UsageError(f"the CPU kernel refused its arguments (batch {rows} must be 1..16)")
    return y


class CpuSpMSpV:
    """A packed weight ready for the kernel (values padded so vector loads stay in bounds).

    ``variant``: the batch-1 kernel variant (common.h; kernels/tune.py picks it per CPU and
    shape); 0 is the original path, and any variant falls back to it where it does not apply.
    Its batch flags pick the path of batches of 2..16 rows (``common.h``): ``VARIANT_BATCH_BASE`` the
    base path for every range no other flag names; ``VARIANT_FEW_REGS`` or ``VARIANT_FEW_PANELS`` AVX2's
    registers or panels for 2..6 rows, ``VARIANT_MANY_PANELS`` its panels for 7..16 rows;
    no batch flag: the build's default.
    """

    def __init__(
        self, sp: SparseLinear, isa: str = "native", threads: int | None = None, padded=None, variant: int = 0
    ):
        """``padded``: the values already followed by the padding (``padded_values``), to hold them once."""
        self.sp = sp
        self.dll = build(isa)
        self.values = padded_values(sp.values) if padded is None else padded
        self.threads = threads or torch.get_num_threads()
        self.variant = variant
        n, k = sp.shape  # the arguments that do not change from call to call (a decode step makes hundreds)
        self.member = _Member(sp.bitmaps.data_ptr(), self.values.data_ptr(), sp.offsets.data_ptr(), n, sp.tile_rows, 0,
                              variant)  # fmt: skip
        self._fixed = (ctypes.byref(self.member), 1, _DTYPE_CODES[self.values.dtype], k)

    @property
    def isa(self) -> str:
        return self.dll.duogpt_spmspv_isa().decode()

    def __call__(self, x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
        """``W @ s(x)`` for x of shape (..., k) with at most 16 rows, ``s`` zeroing ``|x| <= threshold`` (the
        activation sparsifier, applied inside the kernel; 0: x as given); float32 of shape (..., n)."""
        return _product(self.dll, self._fixed, x, threshold, self.sp.shape[0], self.threads)


class CpuGroupSpMSpV:
    """Several packed weights that multiply the same input (q/k/v, gate/up), in one kernel call: the input's
    active columns are found once and one parallel region covers every tile of every member.

    ``__call__(x, threshold)`` returns float32 ``(rows, sum of n)``, member i's product in its columns
    ``cols[i]:cols[i + 1]``, the same numbers as each member's own ``CpuSpMSpV``.
    """

    def __init__(self, kernels: list[CpuSpMSpV]):
        """``kernels``: the members, each with its own tile height and variant; one input width, dtype and library."""
        first = kernels[0]
        k, dtype = first.sp.shape[1], first.values.dtype
        if any(kn.sp.shape[1] != k or kn.values.dtype != dtype or kn.dll is not first.dll for kn in kernels):
            raise UsageError("a group product needs members of one input width, value dtype and kernel build")
        self.kernels, self.k, self.dll, self.threads = list(kernels), k, first.dll, first.threads
        self.cols = [0]
        for kn in kernels:
            self.cols.append(self.cols[-1] + kn.sp.shape[0])
        members = [_Member.from_buffer_copy(kn.member) for kn in kernels]
        for member, col0 in zip(members, self.cols, strict=False):
            member.col0 = col0
        self._members = (_Member * len(kernels))(*members)
        self._fixed = (ctypes.byref(self._members), len(kernels), _DTYPE_CODES[dtype], k)

    def __call__(self, x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
        """``[W_0 s(x), W_1 s(x), ...]`` side by side for x of shape (..., k) with at most 16 rows; float32 of
        shape (..., sum of n)."""
        return _product(self.dll, self._fixed, x, threshold, self.cols[-1], self.threads)
