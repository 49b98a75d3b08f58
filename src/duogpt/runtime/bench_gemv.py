"""GEMV benchmark: dense baselines against the dual-sparse kernel, side by side in one run.

Per shape x dtype x (p_w, p_x) x rows, measured in one process, dense and sparse calls
interleaved, medians:

- ``dense_ms``: torch (``mv`` / ``mm``) on the dense weight;
- ``sparse_ms``: what the sparse runtime runs: the kernel with this CPU's plan (kernels/tune.py;
  also ``kernel_ms``), or, for a weight without zeros on inputs without zeros where this CPU
  measures it faster (``tune.dense_faster``; ``path`` 'dense'), the dense product of the weight
  held dense (``cpu.dense_row``); ``base_ms`` the original kernel (variant 0, stored tiles;
  batches by its own batched path, flag 128) in the same run, ``own_dense_ms`` the runtime on
  the same shape at p_w = p_x = 0;
- ``roofline_ms`` = dense bytes / the highest read rate seen in the same run (torch ``sum``, a
  streaming sum, every dense GEMV): the time of a dense GEMV that streams its weight at the
  machine's bandwidth, the strongest dense baseline there is;
  ``roofline_speedup`` = roofline_ms / sparse_ms.

Every timed call finds its weights outside the caches, as decode does (each layer is read once
per token): before each call the side's arrays are flushed from every cache level (clflush);
where the CPU cannot flush, each side cycles through copies totalling twice the last-level cache.
"""

from __future__ import annotations

import statistics
import time

import torch

from duogpt.report import markdown
from duogpt.runtime.bench import (
    DEFAULT_MODEL_SHAPES,
    LLAMA7B_SHAPES,
    SPARSITIES,
    kernel_bytes,
    machine_info,
    random_problem,
    read_bandwidth_gbps,
)
from duogpt.runtime.format import DEFAULT_TILE_ROWS, SparseLinear, dense_no_larger, pack
from duogpt.runtime.kernels import cpu, tune

BATCH_ROWS = (4, 16)  # also timed at 50/50


class Side:
    """One way of computing the product, called on cold weights: its arrays flushed from the caches
    before each call (``prepare``), or, where the CPU cannot flush, one of enough copies in turn."""

    def __init__(self, make, weight_bytes: int, llc_bytes: int, can_flush: bool):
        """``make(i)`` -> (fn, arrays): copy ``i`` of the weight (0: the original) and what to flush."""
        copies = 1 if can_flush else min(1000, max(1, -(-2 * llc_bytes // weight_bytes)))
        self.copies = [make(i) for i in range(copies)]
        self.can_flush, self.turn = can_flush, 0

    def prepare(self) -> None:
        self.turn = (self.turn + 1) % len(self.copies)
        if self.can_flush:
            cpu.flush(*self.copies[self.turn][1])

    def __call__(self, x):
        return self.copies[self.turn][0](x)


def _copy(sp: SparseLinear) -> SparseLinear:
    values = cpu.padded_values(sp.values).clone()
    return SparseLinear(sp.bitmaps.clone(), values[: sp.values.numel()], sp.offsets.clone(), sp.shape, sp.tile_rows)


def dense_side(W: torch.Tensor, llc_bytes: int, can_flush: bool) -> Side:
    def make(i):
        w = W if i == 0 else W.clone()
        return (lambda x: x @ w.T), [w]

    return Side(make, W.numel() * W.element_size(), llc_bytes, can_flush)


def dense_row_side(W: torch.Tensor, llc_bytes: int, can_flush: bool) -> Side:
    """The runtime's path for a weight it holds dense: ``cpu.dense_row`` on the row-major weight."""

    def make(i):
        w = W.contiguous() if i == 0 else W.clone()
        return (lambda x: cpu.dense_row(w, x)), [w]

    return Side(make, W.numel() * W.element_size(), llc_bytes, can_flush)


def kernel_side(sp: SparseLinear, variant: int, llc_bytes: int, can_flush: bool) -> Side:
    def make(i):
        s = sp if i == 0 else _copy(sp)
        kernel = cpu.CpuSpMSpV(s, variant=variant)
        return kernel, [s.bitmaps, kernel.values, s.offsets]

    return Side(make, sp.nbytes(), llc_bytes, can_flush)


def medians(sides: list[Side], inputs: list[torch.Tensor], repeats: int) -> list[float]:
    """Median ms per call of each side, 5 calls of each in turn, ``repeats`` calls in all per side."""
    for side, x in zip(sides, inputs, strict=True):
        side(x)  # warm the code paths
    times: list[list[float]] = [[] for _ in sides]
    for _ in range(max(1, repeats // 5)):
        for i, (side, x) in enumerate(zip(sides, inputs, strict=True)):
            for _ in range(5):
                side.prepare()
                t0 = time.perf_counter()
                side(x)
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def _problem(shape, pw, px, dtype, rows):
    W, x = random_problem(shape, pw, px, dtype)
    if rows > 1:
        gen = torch.Generator().manual_seed(rows)
        x = torch.randn(rows, shape[1], generator=gen)
        x[torch.rand(rows, shape[1], generator=gen) < px] = 0
    # a model in bfloat16 feeds bfloat16 activations: both sides get the same values
    return W, x.to(dtype).float() if dtype == torch.bfloat16 else x


def gemv_record(shape, dtype, pw, px, rows, repeats, env: dict) -> dict:
    """One shape x dtype x (p_w, p_x) x rows: dense torch, the planned kernel and the original kernel."""
    W, x = _problem(shape, pw, px, dtype, rows)
    default_tile = env["tile_rows"]
    sp = pack(W, tile_rows=default_tile)
    plan = tune.plan(*shape, dtype, sp.values.numel() / W.numel(), default_tile)
    planned = cpu.retile(sp, plan.tile_rows)
    held_dense = px == 0 and dense_no_larger(*shape, sp.values.numel(), W.element_size())
    held_dense = held_dense and tune.dense_faster(*shape, dtype, default_tile)  # the runtime's choice (linear.py)
    sides = [
        dense_side(W, env["llc_bytes"], env["can_flush"]),
        kernel_side(planned, plan.variant, env["llc_bytes"], env["can_flush"]),
        kernel_side(sp, cpu.VARIANT_BATCH_BASE, env["llc_bytes"], env["can_flush"]),  # batches too: the first path
    ] + ([dense_row_side(W, env["llc_bytes"], env["can_flush"])] if held_dense else [])
    ms = medians(sides, [x.to(dtype), x, x, x][: len(sides)], repeats)
    dense_ms, kernel_ms, base_ms, sparse_ms = ms[0], ms[1], ms[2], ms[-1] if held_dense else ms[1]
    dense_bytes = W.numel() * W.element_size()
    roofline_ms = dense_bytes / env["bandwidth_gbps"] / 1e6
    need = dense_bytes if held_dense else kernel_bytes(cpu.CpuSpMSpV(planned), x)
    runtime = sides[-1] if held_dense else sides[1]
    return {
        "shape": list(shape),
        "dtype": _name(dtype),
        "p_w": pw,
        "p_x": px,
        "rows": rows,
        "plan": "dense" if held_dense else str(plan),
        "path": "dense" if held_dense else "kernel",
        "dense_ms": dense_ms,
        "sparse_ms": sparse_ms,
        "kernel_ms": kernel_ms,
        "base_ms": base_ms,
        "roofline_ms": roofline_ms,
        "speedup": dense_ms / sparse_ms,
        "roofline_speedup": roofline_ms / sparse_ms,
        "plan_over_base": base_ms / sparse_ms,
        "dense_gbps": dense_bytes / dense_ms / 1e6,
        "sparse_gbps": need / sparse_ms / 1e6,
        "sparse_bytes": need,
        "max_abs_error": float((runtime(x) - (x @ W.float().T)).abs().max()),
        "isa": sides[1].copies[0][0].isa,
    }


def gemv(
    shapes=None,
    dtypes=(torch.float32, torch.bfloat16),
    sparsities=None,
    repeats: int = 50,
    tile_rows: int = DEFAULT_TILE_ROWS,
    progress=print,
    batch_rows=BATCH_ROWS,
) -> dict:
    """Every shape x dtype x (p_w, p_x) at one row, and 50/50 at ``batch_rows``; plus the kernel's own dense path."""
    machine = machine_info()
    llc = max(machine["caches"].values(), default=256 << 20)
    can_flush = cpu.flush(torch.zeros(16))
    env = {"tile_rows": tile_rows, "llc_bytes": llc, "can_flush": can_flush, "bandwidth_gbps": read_bandwidth_gbps()}
    records, variants = [], []
    for shape in shapes or LLAMA7B_SHAPES + DEFAULT_MODEL_SHAPES:
        for dtype in dtypes:
            runs = [(pw, px, 1) for pw, px in sparsities or SPARSITIES] + [(0.5, 0.5, r) for r in batch_rows]
            group = [gemv_record(shape, dtype, pw, px, rows, repeats, env) for pw, px, rows in runs]
            own = {r["rows"]: r["sparse_ms"] for r in group if r["p_w"] == r["p_x"] == 0}
            for rec in group:
                if 1 in own and rec["rows"] == 1:
                    rec["own_dense_ms"] = own[1]
                    rec["own_dense_speedup"] = own[1] / rec["sparse_ms"]
                progress(_line(rec))  # roofline here from the probes; the final one may be stricter
            records += group
            plans = tune.candidates(shape[0], dtype, torch.get_num_threads(), tile_rows)
            timed = tune.measure(*shape, dtype, 0.5, plans, torch.get_num_threads())
            variants.append(
                {"shape": list(shape), "dtype": _name(dtype), "ms": {str(p): t * 1e3 for p, t in timed.items()}}
            )
    probe = env["bandwidth_gbps"]
    bandwidth = max([probe] + [r["dense_gbps"] for r in records])  # a dense GEMV that outran the probes sets the bar
    for rec in records:
        rec["roofline_ms"] *= probe / bandwidth
        rec["roofline_speedup"] = rec["roofline_ms"] / rec["sparse_ms"]
    return {
        "kind": "gemv",
        "bandwidth_probe_gbps": probe,
        "machine": machine,
        "bandwidth_gbps": bandwidth,
        "cold": "clflush before every call" if can_flush else f"copies totalling {2 * llc >> 20} MiB, in turn",
        "tile_rows": tile_rows,
        "repeats": repeats,
        "records": records,
        "variants": variants,
    }


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _line(r: dict) -> str:
    return (
        f"{r['shape'][0]}x{r['shape'][1]} {r['dtype']:>8} pw={r['p_w']} px={r['p_x']} rows={r['rows']}: "
        f"dense {r['dense_ms']:.3f} ms, sparse {r['sparse_ms']:.3f} ms (plan {r['plan']}; original "
        f"{r['base_ms']:.3f}), {r['speedup']:.2f}x torch, {r['roofline_speedup']:.2f}x roofline"
    )


def gemv_markdown(result: dict) -> str:
    rows = [
        [
            f"{r['shape'][0]}x{r['shape'][1]}",
            r["dtype"],
            f"{r['p_w']:.1f}/{r['p_x']:.1f}",
            str(r["rows"]),
            f"{r['dense_ms']:.3f}",
            f"{r['roofline_ms']:.3f}",
            f"{r['base_ms']:.3f}",
            f"{r['sparse_ms']:.3f}",
            r["plan"],
            f"{r['speedup']:.2f}x",
            f"{r['roofline_speedup']:.2f}x",
            f"{r['own_dense_speedup']:.2f}x" if "own_dense_speedup" in r else "",
            f"{r['sparse_gbps'] / result['bandwidth_gbps']:.0%}",
        ]
        for r in result["records"]
    ]
    head = ["shape", "dtype", "p_w/p_x", "rows", "torch ms", "roofline ms", "original ms", "runtime ms", "plan",
            "vs torch", "vs roofline", "vs own dense", "of bandwidth"]  # fmt: skip
    m = result["machine"]
    caches = ", ".join(f"{k} {v >> 10} KiB" for k, v in m["caches"].items())
    return (
        f"GEMV: torch dense, the memory roofline (dense bytes / bandwidth) and the dual-sparse kernel "
        f"({result['records'][0]['isa'] if result['records'] else 'n/a'}). Machine: {m['cpu']} ({caches}), "
        f"{m['threads']} threads, torch {m['torch']}; roofline bandwidth {result['bandwidth_gbps']:.1f} GB/s, the "
        "highest read rate in the same run (torch sum, a streaming sum, every dense GEMV); "
        f"weights cold before every call ({result['cold']}); medians of {result['repeats']} "
        "interleaved calls per side. 'original': the kernel's first version (variant 0, 256-row tiles; batches "
        "by its own batched path, flag 128) in the same run; 'plan': variant:tile rows chosen for this CPU by the "
        "tuner (the variant with its batch-path flags, kernels/common.h), or 'dense': a weight without zeros on "
        "inputs without zeros, which the runtime holds dense and multiplies by its dense product where this CPU "
        "measured that faster (the kernel's time is the JSON's kernel_ms).\n\n"
        + markdown(head, rows)
        + _variants_md(result)
    )


def _variants_md(result: dict) -> str:
    """Every candidate plan the tuner times, at 50/50 (ms per call, cold weights): the ones that lost too."""
    if not result.get("variants"):
        return ""
    plans = list(dict.fromkeys(p for v in result["variants"] for p in v["ms"]))
    rows = [
        [f"{v['shape'][0]}x{v['shape'][1]}", v["dtype"], *(f"{v['ms'][p]:.3f}" if p in v["ms"] else "" for p in plans)]
        for v in result["variants"]
    ]
    return (
        "\n\nEvery candidate (variant:tile rows, see kernels/common.h) as the tuner times it: random weights at "
        "50% density, input half zeros, weights flushed before each call, median ms.\n\n"
        + markdown(["shape", "dtype", *plans], rows)
    )
