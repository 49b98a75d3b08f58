"""Per-CPU choice of the decode kernel: variant and tile height, measured at first use and cached.

The packed format on disk is machine-independent (tiles of 256 rows by default). Which kernel
variant (``common.h``) and which tile height decode fastest depends on the CPU: how costly its
expand and shuffle instructions are, whether it has AVX512-BF16, how its prefetchers follow
column jumps, how large its L1 is. ``plan(n, k, dtype, density)`` answers for one weight shape:

- candidates: the original register-tile path at the default tile, the bfloat16 32-row
  register tiles (128, 256 rows; with and without vdpbf16ps), strips (one per thread) with
  16-bit and 32-bit expands, and the AVX2 byte-shuffle kernels (64-row register tiles, strips);
- each is timed on a random packed weight of that shape and density (weights in eighths) with
  an input half zeros, every call on weights evicted from the caches first (decode reads each
  layer from memory), in two rounds of a forward and a reverse pass (a machine's speed drifts by
  tens of percent within a minute; the drift cancels), 16 calls, median per candidate; more for
  short calls (after a first pass over every candidate, the later passes time enough calls for
  about 50 ms of the fastest one's, at most 256 calls in all): at 7B shapes a call takes
  milliseconds, at the default model's tens of microseconds, where 16 calls let the noise of a few
  pick the plan;
- batches of 2..16 rows (speculative decoding, small-batch serving) run on the layout the plan
  chose; where the build has AVX2's batch paths beside the base one (sums in memory), the paths
  are timed on that layout the same way, at 4 rows (base, AVX2's sums in registers, AVX2's panels)
  and at 16 (base, panels), and the plan takes the fastest per range of rows (flags in its
  variant, ``common.h``). None wins everywhere: on an AVX2 EPYC the panels beat the register path
  at 4 rows on wide strips and lose on 64-row tiles; an AVX-512 CPU uses AVX2's paths only where
  it measures them faster than its own;
- the fastest is cached in ``tune.json`` beside the built kernel, keyed by the tuner's version,
  CPU model, shape, dtype, density and threads: a machine measures each shape once (one row and
  batches: 2-3 s at 4096x4096, 8-11 s at 11008x4096 on a 2-core EPYC), later loads read the file.

``dense_faster(n, k, dtype, default_tile)`` answers a second question for a weight with no
zeros to skip: whether the dense decode product (``cpu.dense_row``, a plain row-major weight)
beats the kernel's plan on it when the input has no zeros either, timed the same way (weights
flushed, forward and reverse passes, medians) and cached beside the plans. At full density the
packed weight is no smaller than the dense one (its bitmaps add a bit per weight), so the
runtime may hold such a weight dense without using more memory (``linear.decode_paths``).

``DUOGPT_KERNEL_PLAN``: ``auto`` (default, as above), ``off`` (the original path at the stored
tile height, no measurement), or ``VARIANT:TILE_ROWS`` (e.g. ``2:2048``) to force one; either
of the last two keeps every packed weight on the kernel.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from functools import cache

import torch

from duogpt.errors import UsageError
from duogpt.files import write_text
from duogpt.logs import log
from duogpt.runtime.format import SparseLinear, segment_offsets
from duogpt.runtime.kernels import cpu

PLAN_ENV = "DUOGPT_KERNEL_PLAN"
ROUNDS, MAX_ROUNDS = 16, 256  # timed calls per candidate: at least, and at most for short calls
MIN_SECONDS = 0.05  # timing per candidate that sets the number of calls for short calls
PASSES = 2  # forward and reverse passes over the candidates, each this many times
TUNE_VERSION = 4  # part of the cache key: plans measured by an older candidate list or method are measured again
CACHE_FILE = "tune.json"


@dataclass(frozen=True)
class Plan:
    """A kernel variant (``common.h``, with its flags), the tile height it runs on, and the byte
    boundary every column segment starts on (0: packed back to back)."""

    variant: int
    tile_rows: int
    align: int = 0

    def __str__(self) -> str:
        return f"{self.variant}:{self.tile_rows}" + (f":{self.align}" if self.align else "")

    @classmethod
    def parse(cls, text: str) -> Plan:
        parts = [int(v) for v in text.split(":")]
        if not 2 <= len(parts) <= 3 or parts[0] < 0 or parts[1] < 64 or parts[1] % 64 or min(parts) < 0:
            raise ValueError(text)
        return cls(*parts)


def _round_rows(rows: int) -> int:
    return max(64, -(-rows // 64) * 64)


def candidates(n: int, dtype: torch.dtype, threads: int, default_tile: int) -> list[Plan]:
    """Every (variant, tile height, alignment) worth timing for an ``n``-row weight of ``dtype`` on this build.

    The set is what won somewhere in the measurements of docs/bench-gemv.md; variants that lost
    everywhere (no software prefetch, 1024-row strips, a scattered column order) are not timed."""
    variants, has_dp = cpu.variants_available()
    rows = _round_rows(n)
    out = [Plan(0, default_tile)]
    regs = 256 if rows >= 256 else 128
    if dtype == torch.bfloat16 and 1 in variants:
        out += [Plan(1, regs), Plan(1, regs, 64)]
        if has_dp:
            out.append(Plan(1 | cpu.VARIANT_NO_DP, regs))
    half = _round_rows(-(-n // threads))  # one strip per thread
    if dtype in (torch.float32, torch.bfloat16) and 2 in variants and half > 256:
        head = cpu.VARIANT_PF_HEAD
        out += [Plan(2, half), Plan(2 | head, half), Plan(2 | head, half, 64), Plan(3, half), Plan(3 | head, half)]
    if 4 in variants:  # AVX2 (avx2.c): 64-row register tiles, strips; with and without software prefetch
        out += [Plan(4, 64), Plan(4 | cpu.VARIANT_NO_PF, 64)]
        out += [Plan(5, half), Plan(5 | cpu.VARIANT_NO_PF, half)] if half > 64 else []
    return list(dict.fromkeys(out))


def random_words(shape: tuple[int, ...], density: float, gen: torch.Generator) -> torch.Tensor:
    """int64 words whose bits are each set with probability ``density`` rounded to eighths: the
    binary digits b1 b2 b3 of the eighths, from the last, OR (digit 1) or AND (digit 0) a fresh
    random word into the running one (each step maps p to (1 + p) / 2 or p / 2)."""
    eighths = min(8, max(1, round(density * 8)))
    if eighths == 8:
        return torch.full(shape, -1, dtype=torch.int64)
    word = torch.zeros(shape, dtype=torch.int64)
    for bit in ((eighths >> 0) & 1, (eighths >> 1) & 1, (eighths >> 2) & 1):
        rnd = (torch.randint(0, 1 << 32, shape, generator=gen) << 32) | torch.randint(0, 1 << 32, shape, generator=gen)
        word = word | rnd if bit else word & rnd
    return word


def random_packed(n: int, k: int, dtype: torch.dtype, density: float, seed: int = 0) -> SparseLinear:
    """A random packed weight (tiles of 64 rows) of the given shape and density, values padded."""
    gen = torch.Generator().manual_seed(seed)
    tiles = -(-n // 64)
    words = random_words((tiles, k, 1), density, gen)
    if n % 64:  # no rows past the matrix
        words[-1] &= (1 << (n % 64)) - 1
    bitmaps = words.view(torch.uint64)
    offsets = segment_offsets(bitmaps)
    nnz = int(offsets[-1, -1])
    values = torch.randn(nnz + cpu.pad_elements(dtype), generator=gen).to(dtype)
    return SparseLinear(bitmaps, values[:nnz], offsets, (n, k), 64)


BATCH_ROWS = {  # rows timed per range of rows for the batch-path choice: the AVX2 paths tried against the base one
    4: {"registers": cpu.VARIANT_FEW_REGS, "panels": cpu.VARIANT_FEW_PANELS},
    16: {"panels": cpu.VARIANT_MANY_PANELS},
}


def _input(k: int, dtype: torch.dtype, seed: int = 1, rows: int = 0) -> torch.Tensor:
    """A decode input (``rows`` 0: one vector; else ``rows`` of them), half of each row's entries zero."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(max(rows, 1), k, generator=gen)
    x[torch.rand(x.shape, generator=gen) < 0.5] = 0
    x = x if rows else x[0]
    return x.to(dtype).float() if dtype == torch.bfloat16 else x  # a bfloat16 model's inputs are bfloat16


def _time(fn, arrays: list[torch.Tensor], x: torch.Tensor, calls: int) -> list[float]:
    """Seconds of ``calls`` calls ``fn(x)``, each after flushing ``arrays`` (its weight) from the caches."""
    out = []
    for _ in range(calls):
        cpu.flush(*arrays)
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def _kernel_arrays(kernel: cpu.CpuSpMSpV) -> list[torch.Tensor]:
    return [kernel.sp.bitmaps, kernel.values, kernel.sp.offsets]


def rounds_for(seconds_per_call: float) -> int:
    """Timed calls per candidate for calls of about this length: ROUNDS, or enough for MIN_SECONDS of timing."""
    return int(min(MAX_ROUNDS, max(ROUNDS, MIN_SECONDS / max(seconds_per_call, 1e-7))))


def measure(
    n: int, k: int, dtype: torch.dtype, density: float, plans: list[Plan], threads: int, rows: int = 0
) -> dict[Plan, float]:
    """Median seconds per call of each plan on a random weight (one re-tiled copy alive at a time: plans of one
    layout are timed one after another on it), on one input vector (``rows`` 0) or a batch of ``rows``."""
    base = random_packed(n, k, dtype, density)
    x = _input(k, dtype, rows=rows)
    layouts = list(dict.fromkeys((p.tile_rows, p.align) for p in plans))
    plans = sorted(plans, key=lambda p: layouts.index((p.tile_rows, p.align)))
    times: dict[Plan, list[float]] = {p: [] for p in plans}
    per_pass = ROUNDS // (2 * PASSES)
    for i, order in enumerate((plans, plans[::-1]) * PASSES):
        layout, packed = None, None
        for p in order:
            if (p.tile_rows, p.align) != layout:
                layout, packed = (p.tile_rows, p.align), None  # the last layout's copy freed first
                packed = cpu.retile(base, p.tile_rows, p.align)
            kernel = cpu.CpuSpMSpV(packed, threads=threads, variant=p.variant)
            kernel(x)  # warm the code path
            times[p] += _time(kernel, _kernel_arrays(kernel), x, per_pass)
        if i == 0:  # every candidate seen once: the later passes time as many calls as the fastest one needs
            fastest = min(statistics.median(t) for t in times.values())
            per_pass = max(per_pass, -(-rounds_for(fastest) // (2 * PASSES)))
    return {p: statistics.median(t) for p, t in times.items()}


def _cache_path():
    return os.path.join(cpu.build().directory, CACHE_FILE)


def _read_cache() -> dict:
    try:
        with open(_cache_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _forced(default_tile: int) -> Plan | None:
    value = os.environ.get(PLAN_ENV, "auto").strip().lower()
    if value == "auto":
        return None
    if value == "off":
        return Plan(0, default_tile)
    try:
        return Plan.parse(value)
    except ValueError:
        raise UsageError(
            f"{PLAN_ENV}={value!r} is not understood: use auto, off or VARIANT:TILE_ROWS[:ALIGN] (e.g. 2:2048)"
        ) from None


def plan(n: int, k: int, dtype: torch.dtype, density: float, default_tile: int, threads: int | None = None) -> Plan:
    """The kernel plan for an (n, k) weight of ``dtype`` with this fraction of nonzeros (cached per machine)."""
    forced = _forced(default_tile)
    if forced is not None:
        return forced
    threads = threads or torch.get_num_threads()
    eighths = min(8, max(1, round(density * 8)))
    return _plan_cached(n, k, dtype, eighths, default_tile, threads)


@cache
def _plan_cached(n: int, k: int, dtype: torch.dtype, eighths: int, default_tile: int, threads: int) -> Plan:
    plans = candidates(n, dtype, threads, default_tile)
    if len(plans) == 1:
        return plans[0]
    key = f"v{TUNE_VERSION}|{cpu.cpu_model()}|{n}x{k}|{str(dtype).replace('torch.', '')}|{eighths}/8|{threads}t"
    entry = _read_cache().get(key)
    if entry is not None:
        return Plan(int(entry["variant"]), int(entry["tile_rows"]), int(entry.get("align", 0)))
    t0 = time.perf_counter()
    timed = measure(n, k, dtype, eighths / 8, plans, threads)
    best = min(timed, key=timed.get)
    ms = {str(p): t * 1e3 for p, t in timed.items()}
    best, batch_ms = batch_path(best, n, k, dtype, eighths / 8, threads)
    log.info(
        "kernel plan for %dx%d %s on this CPU: variant %d, tiles of %d rows (%.3f ms; %d candidates timed in %.1f s)",
        n, k, str(dtype).replace("torch.", ""), best.variant, best.tile_rows, min(timed.values()) * 1e3, len(plans),
        time.perf_counter() - t0,
    )  # fmt: skip
    entry = {"variant": best.variant, "tile_rows": best.tile_rows, "align": best.align, "ms": ms}
    _remember(key, entry | ({"batch_ms": batch_ms} if batch_ms else {}))
    return best


def batch_path(best: Plan, n: int, k: int, dtype: torch.dtype, density: float, threads: int) -> tuple[Plan, dict]:
    """``best`` with the batch flags (``common.h``) of the path faster on its layout at each of BATCH_ROWS, and the
    times in ms per path and rows; ``best`` unchanged where the build has only the base batch path."""
    if 4 not in cpu.variants_available()[0]:  # the AVX2 kernels (avx2.c) are not in this build
        return best, {}
    ms: dict[str, dict[str, float]] = {}
    flags = cpu.VARIANT_BATCH_BASE
    for rows, paths in BATCH_ROWS.items():
        sides = {name: Plan(best.variant | flag, best.tile_rows, best.align)
                 for name, flag in {"base": cpu.VARIANT_BATCH_BASE, **paths}.items()}  # fmt: skip
        timed = measure(n, k, dtype, density, list(sides.values()), threads, rows=rows)
        ms[str(rows)] = {name: timed[p] * 1e3 for name, p in sides.items()}
        fastest = min(sides, key=lambda name: timed[sides[name]])
        flags |= paths.get(fastest, 0)
    return Plan(best.variant | flags, best.tile_rows, best.align), ms


def _remember(key: str, entry: dict) -> None:
    """Add one measured answer to the cache file (a read-only cache: measured again next time, still correct)."""
    cached = _read_cache()  # another process may have added shapes meanwhile
    cached[key] = entry
    try:
        write_text(_cache_path(), json.dumps(cached, indent=1, sort_keys=True))
    except OSError as err:
        log.warning("could not cache the kernel plan (%s): set DUOGPT_CACHE to a writable folder", err)


def dense_faster(n: int, k: int, dtype: torch.dtype, default_tile: int, threads: int | None = None) -> bool:
    """Whether this CPU decodes an (n, k) weight without zeros, on inputs without zeros, faster by the dense
    product (``cpu.dense_row``) than by the kernel's plan for it (cached per machine; never under a forced plan)."""
    if _forced(default_tile) is not None:
        return False
    threads = threads or torch.get_num_threads()
    return _dense_cached(n, k, dtype, default_tile, threads)


@cache
def _dense_cached(n: int, k: int, dtype: torch.dtype, default_tile: int, threads: int) -> bool:
    key = f"v{TUNE_VERSION}|dense|{cpu.cpu_model()}|{n}x{k}|{str(dtype).replace('torch.', '')}|{threads}t"
    entry = _read_cache().get(key)
    if entry is not None:
        return bool(entry["dense"])
    chosen = plan(n, k, dtype, 1.0, default_tile, threads)
    kernel_s, dense_s = measure_dense(n, k, dtype, chosen, threads)
    log.info(
        "decode path for a full %dx%d %s weight on this CPU: %s (kernel %s %.3f ms, dense %.3f ms)",
        n, k, str(dtype).replace("torch.", ""), "dense" if dense_s < kernel_s else "kernel", chosen,
        kernel_s * 1e3, dense_s * 1e3,
    )  # fmt: skip
    _remember(key, {"dense": dense_s < kernel_s, "ms": {"kernel": kernel_s * 1e3, "dense": dense_s * 1e3}})
    return dense_s < kernel_s


def measure_dense(n: int, k: int, dtype: torch.dtype, chosen: Plan, threads: int) -> tuple[float, float]:
    """Median seconds per call of the kernel (plan ``chosen``) and of the dense product on a random (n, k) weight
    without zeros and an input without zeros: cold weights, forward and reverse passes, as ``measure``."""
    gen = torch.Generator().manual_seed(2)
    kernel = cpu.CpuSpMSpV(
        cpu.retile(random_packed(n, k, dtype, 1.0), chosen.tile_rows, chosen.align), threads=threads,
        variant=chosen.variant,
    )  # fmt: skip
    W = torch.randn(n, k, generator=gen).to(dtype)
    x = torch.randn(k, generator=gen)
    x = x.to(dtype).float() if dtype == torch.bfloat16 else x
    sides = [(kernel, _kernel_arrays(kernel)), (lambda v: cpu.dense_row(W, v, threads), [W])]
    times: list[list[float]] = [[], []]
    per_pass = ROUNDS // (2 * PASSES)
    for i, order in enumerate(([0, 1], [1, 0]) * PASSES):
        for s in order:
            sides[s][0](x)  # warm the code path
            times[s] += _time(*sides[s], x, per_pass)
        if i == 0:
            per_pass = max(per_pass, -(-rounds_for(min(statistics.median(t) for t in times)) // (2 * PASSES)))
    return statistics.median(times[0]), statistics.median(times[1])
