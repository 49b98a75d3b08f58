"""GPU benchmarks: the Triton product against cuBLAS's dense GEMV, and a 7B-shaped stack per token.

Every figure is a CUDA-graph replay (the launches' host cost removed, as a graph-captured or
compiled decode loop runs), beside the eager time of the same calls. Each timed graph calls
the product once per copy of the weight, with enough copies to fill four times the L2 cache,
so every call reads its weight from memory. ``roofline_speedup`` = (dense weight bytes /
read bandwidth measured in the same run) / sparse time: the sparse product against a dense
GEMV that streams at the memory's full speed, the strongest dense path there can be.
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from duogpt.errors import UsageError
from duogpt.report import markdown
from duogpt.runtime.bench import LLAMA7B_SHAPES, decode_rates, linear_bytes, pruned_stack, random_problem
from duogpt.runtime.format import pack

GPU_SPARSITIES = [(0.5, 0.5), (0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.7, 0.5)]
PARTS = ("sweep", "gemv", "stack")


def gpu(parts=PARTS, layers: int = 4, progress=print, saved=None) -> dict:
    """Every GPU benchmark in one run: the launch-shape sweep, GEMV per shape / sparsity / rows at each
    shape's fastest launch shape, and the 7B-shaped stack (with each tile height's winner). ``saved(result)``
    is called after each part (so a run cut short keeps what it measured)."""
    if not torch.cuda.is_available():
        raise UsageError("bench gpu needs a CUDA device (torch sees none); bench gemv and decode time the CPU")
    from duogpt.runtime.kernels import triton_spmspv
    from duogpt.runtime.kernels.triton_spmspv import Config

    triton_spmspv._need_triton()
    import triton

    result = {"kind": "gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "bandwidth_gbps": read_bandwidth_gbps(), "parts": {}}  # fmt: skip
    progress(f"{result['device']}: read bandwidth {result['bandwidth_gbps']:.0f} GB/s")
    sweep = result["parts"]["sweep"] = gemv_sweep(progress=progress) if "sweep" in parts else []
    best = {shape: (rec["tile_rows"], Config.parse(rec["config"])) for shape, rec in best_by_shape(sweep).items()}
    per_tile = result["best_by_tile"] = {str(t): v for t, v in best_by_tile(sweep).items()}
    _save(saved, result)
    if "gemv" in parts:
        choice = best or {s: (256, triton_spmspv.DEFAULT_CONFIGS[256]) for s in LLAMA7B_SHAPES}
        result["parts"]["gemv"] = gemv(choice, result["bandwidth_gbps"], progress=progress)
        _save(saved, result)
    if "stack" in parts:
        for tile, (config, total) in per_tile.items():  # the stack decodes with each tile height's winner
            if total < float("inf"):
                triton_spmspv.DEFAULT_CONFIGS[int(tile)] = Config.parse(config)
        result["default_configs"] = {str(t): str(c) for t, c in triton_spmspv.DEFAULT_CONFIGS.items()}
        result["parts"]["stack"] = stack_per_token(layers, progress=progress)
        _save(saved, result)
    return result


def _save(saved, result: dict) -> None:
    if saved is not None:
        saved(result)


def read_bandwidth_gbps(gib: float = 2.0, repeats: int = 7) -> float:
    """Bytes per second of a sum over a large float32 tensor (median of ``repeats``), in GB/s."""
    a = torch.ones(int(gib * 2**30) // 4, device="cuda")
    a.sum()
    return a.numel() * 4 / (_timed(a.sum, 1, repeats) / 1e3) / 1e9


def copies_for(nbytes: int) -> int:
    """Copies of a weight that fill four times the L2 cache (at least two)."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)
    return max(2, -(-4 * l2 // max(1, nbytes)))


def graph_ms(calls: list, replays: int = 20, rounds: int = 5) -> float:
    """Milliseconds per call, the calls captured in order in one CUDA graph (median of ``rounds``)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: compiles, allocator pools
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    return _timed(graph.replay, replays, rounds) / len(calls)


def eager_ms(calls: list, replays: int = 20, rounds: int = 5) -> float:
    """Milliseconds per call, launched one by one from Python (median of ``rounds``)."""

    def run():
        for call in calls:
            call()

    run()
    return _timed(run, replays, rounds) / len(calls)


def _timed(fn, replays: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / replays)
    return statistics.median(times)


def _sparse_calls(sp, xs, config):
    """One product per copy of the packed weight on the GPU, copies filling four times the L2 cache."""
    from duogpt.runtime.kernels import triton_spmspv

    copies = copies_for(sp.nbytes())
    first = type(sp)(sp.bitmaps.cuda(), sp.values.cuda(), sp.offsets.cuda(), sp.shape, sp.tile_rows)
    on = [first] + [
        type(sp)(first.bitmaps.clone(), first.values.clone(), first.offsets.clone(), sp.shape, sp.tile_rows)
        for _ in range(copies - 1)
    ]
    return [lambda s=s: triton_spmspv.spmspv(s, xs, config=config) for s in on]


def default_configs():
    """The launch shapes the sweep times: (columns per step, chunk, warps, compaction, rows per thread)."""
    from duogpt.runtime.kernels.triton_spmspv import Config

    grid = itertools.product((16, 32), (128, 256), (8, 16, 32))
    configs = [Config(cols, chunk, 4, True, rpt) for cols, chunk, rpt in grid]
    return configs + [Config(16, 256, 8, True, 16), Config(16, 256, 4, False, 16), Config(16, 128, 4, True, 1)]


def gemv_sweep(shapes=None, tiles=(64, 128, 256), configs=None, progress=print) -> list[dict]:
    """bfloat16 50/50 at each shape: every (tile, launch shape), graph-timed, with its error against dense."""
    shapes, configs = shapes or LLAMA7B_SHAPES, configs or default_configs()
    records = []
    for shape in shapes:
        W, x = random_problem(shape, 0.5, 0.5, torch.bfloat16)
        xs = x.to(torch.bfloat16).cuda()
        reference = (W.float() @ x.to(torch.bfloat16).float()).cuda()
        for tile in tiles:
            sp = pack(W, tile)
            for config in configs:
                rec = {"shape": list(shape), "tile_rows": tile, "config": str(config)}
                try:
                    calls = _sparse_calls(sp, xs, config)
                    rec["max_rel_error"] = _rel_error(calls[0](), reference)
                    rec["graph_ms"] = graph_ms(calls)
                except Exception as e:  # a launch shape the compiler refuses is recorded, not fatal
                    rec["error"] = f"{type(e).__name__}: {str(e)[-300:]} (cause: {e.__cause__!r})"[:800]
                records.append(rec)
                progress(f"sweep {shape} tile {tile} {config}: {rec.get('graph_ms', rec.get('error'))}")
                torch.cuda.empty_cache()
    return records


def _rel_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return float((y.reshape(reference.shape).float() - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def best_by_shape(sweep: list[dict]) -> dict[tuple, dict]:
    """The fastest correct (tile, launch shape) per shape."""
    best: dict[tuple, dict] = {}
    for rec in sweep:
        if "graph_ms" not in rec or rec["max_rel_error"] > 1e-2:
            continue
        key = tuple(rec["shape"])
        if key not in best or rec["graph_ms"] < best[key]["graph_ms"]:
            best[key] = rec
    return best


def best_by_tile(sweep: list[dict]) -> dict[int, tuple[str, float]]:
    """Per tile height, the launch shape with the least total time over the swept shapes (correct on all)."""
    totals: dict[tuple[int, str], list[float]] = {}
    for rec in sweep:
        ok = "graph_ms" in rec and rec["max_rel_error"] <= 1e-2
        totals.setdefault((rec["tile_rows"], rec["config"]), []).append(rec["graph_ms"] if ok else float("inf"))
    best: dict[int, tuple[str, float]] = {}
    for (tile, config), times in totals.items():
        if tile not in best or sum(times) < best[tile][1]:
            best[tile] = (config, sum(times))
    return best


def gemv(choice: dict[tuple, tuple], bandwidth: float, sparsities=None, rows=(1, 4, 16), progress=print):
    """Dense cuBLAS vs the Triton product per shape, sparsity and row count, at ``choice[shape]`` =
    (tile_rows, Config); graph and eager times, speedups, and the roofline speedup."""
    records = []
    for shape, (tile, config) in choice.items():
        for pw, px in sparsities or GPU_SPARSITIES:
            W, _ = random_problem(shape, pw, 0.0, torch.bfloat16)
            first, sp = W.cuda(), pack(W, tile)
            dense = [first] + [first.clone() for _ in range(copies_for(W.numel() * 2) - 1)]
            for r in rows:
                records.append(_gemv_record(dense, sp, px, r, config, bandwidth) | {"p_w": pw, "tile_rows": tile})
                progress(_gemv_line(records[-1]))
            del dense, first
            torch.cuda.empty_cache()
    return records


def _gemv_record(dense: list, sp, px: float, r: int, config, bandwidth: float) -> dict:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(r, sp.shape[1], generator=gen)
    x[torch.rand(r, sp.shape[1], generator=gen) < px] = 0
    xs = x.to(torch.bfloat16).cuda()
    dense_calls = [lambda w=w: F.linear(xs, w) for w in dense]
    sparse_calls = _sparse_calls(sp, xs, config)
    reference = F.linear(xs.float(), dense[0].float())
    rec = {
        "shape": list(sp.shape), "p_x": px, "rows": r, "config": str(config),
        "dense_graph_ms": graph_ms(dense_calls), "sparse_graph_ms": graph_ms(sparse_calls),
        "dense_eager_ms": eager_ms(dense_calls), "sparse_eager_ms": eager_ms(sparse_calls),
        "max_rel_error": _rel_error(sparse_calls[0](), reference),
    }  # fmt: skip
    rec["speedup"] = rec["dense_graph_ms"] / rec["sparse_graph_ms"]
    rec["eager_speedup"] = rec["dense_eager_ms"] / rec["sparse_eager_ms"]
    dense_bytes = dense[0].numel() * dense[0].element_size()
    rec["roofline_ms"] = dense_bytes / (bandwidth * 1e9) * 1e3
    rec["roofline_speedup"] = rec["roofline_ms"] / rec["sparse_graph_ms"]
    rec["dense_gbps"] = dense_bytes / (rec["dense_graph_ms"] * 1e6)
    return rec


def _gemv_line(r: dict) -> str:
    return (
        f"GEMV {r['shape']} {r['p_w']}/{r['p_x']} rows {r['rows']}: dense {r['dense_graph_ms'] * 1e3:.1f} us "
        f"({r['dense_gbps']:.0f} GB/s), sparse {r['sparse_graph_ms'] * 1e3:.1f} us, {r['speedup']:.2f}x, "
        f"roofline {r['roofline_speedup']:.2f}x; eager {r['dense_eager_ms'] * 1e3:.1f} vs "
        f"{r['sparse_eager_ms'] * 1e3:.1f} us; err {r['max_rel_error']:.1e}"
    )


def stack_per_token(layers: int = 4, progress=print) -> dict:
    """A 7B-shaped stack pruned 50/50 (magnitude): one token's forward, dense vs the sparse runtime,
    graph-captured (falls back to eager alone if the model's forward cannot be captured)."""
    from duogpt.pruning.sparsify import uninstall

    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    dense, sparse = pruned_stack(layers, torch.bfloat16, gen)
    dense, sparse = dense.cuda(), sparse.cuda()
    progress(f"stack ready in {time.perf_counter() - t0:.0f} s")
    ids = torch.randint(0, dense.config.vocab_size, (1, 1), generator=gen).cuda()
    out = {"layers": layers, "dtype": "bfloat16"}
    with torch.no_grad():
        masked = dense(input_ids=ids, use_cache=False).logits.float()  # the same dual-sparse model, dense weights
        diff = (sparse(input_ids=ids, use_cache=False).logits.float() - masked).abs().max() / masked.abs().max()
        out["max_rel_logit_difference"] = float(diff)
        uninstall(dense)  # the dense side as fast as it can be: no sparsifier launches
        prompt = torch.randint(0, dense.config.vocab_size, (1, 16), generator=gen).cuda()
        d, s, _, _ = decode_rates(dense, sparse, prompt, new_tokens=32, rounds=3)
        out.update(dense_decode_tok_s=d, sparse_decode_tok_s=s, decode_speedup=s / d)
        progress(f"greedy decode (eager, generate-style loop): dense {d:.1f} tok/s, sparse {s:.1f} tok/s")
        for name, model in (("dense", dense), ("sparse", sparse)):
            step = [lambda m=model: m(input_ids=ids, use_cache=False).logits]
            out[f"{name}_eager_ms"] = eager_ms(step, replays=10)
            try:
                out[f"{name}_graph_ms"] = graph_ms(step, replays=10)
            except Exception as e:
                out[f"{name}_graph_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    for mode in ("eager", "graph"):
        if f"dense_{mode}_ms" in out and f"sparse_{mode}_ms" in out:
            out[f"{mode}_speedup"] = out[f"dense_{mode}_ms"] / out[f"sparse_{mode}_ms"]
    out["linear_bytes_dense"] = linear_bytes(dense)
    progress(f"stack per token: {out}")
    return out


def gpu_markdown(result: dict) -> str:
    """The run as Markdown: GEMV table, the sweep's winners per tile, the stack."""
    head = ["shape", "p_w/p_x", "rows", "cuBLAS us", "roofline us", "sparse us", "tile:launch", "vs cuBLAS",
            "vs roofline", "eager cuBLAS us", "eager sparse us"]  # fmt: skip
    rows = [
        [f"{r['shape'][0]}x{r['shape'][1]}", f"{r['p_w']:.1f}/{r['p_x']:.1f}", str(r["rows"]),
         f"{r['dense_graph_ms'] * 1e3:.1f}", f"{r['roofline_ms'] * 1e3:.1f}", f"{r['sparse_graph_ms'] * 1e3:.1f}",
         f"{r['tile_rows']}:{r['config']}", f"{r['speedup']:.2f}x", f"{r['roofline_speedup']:.2f}x",
         f"{r['dense_eager_ms'] * 1e3:.1f}", f"{r['sparse_eager_ms'] * 1e3:.1f}"]
        for r in result["parts"].get("gemv", [])
    ]  # fmt: skip
    text = (
        f"GPU: {result['device']}, torch {result['torch']}, triton {result['triton']}; read bandwidth "
        f"{result['bandwidth_gbps']:.0f} GB/s (a sum over 2 GiB). bfloat16; CUDA-graph replays, each call on its "
        "own copy of the weight (copies fill 4x the L2); 'eager': the same calls launched from Python. "
        "'tile:launch': stored tile rows : columns per step, chunk, warps, compaction, rows per thread.\n\n"
        + markdown(head, rows)
    )
    if result.get("best_by_tile"):
        best = [[t, c, f"{ms * 1e3:.1f}"] for t, (c, ms) in result["best_by_tile"].items()]
        text += "\nSweep (50/50, three 7B shapes), fastest launch shape per tile:\n\n"
        text += markdown(["tile rows", "launch", "sum of the three shapes, us"], best)
    stack = result["parts"].get("stack")
    if stack:
        text += (
            f"\n7B-shaped stack, {stack['layers']} blocks, 50/50 magnitude, one token's forward: dense "
            f"{stack['dense_graph_ms']:.3f} ms vs sparse {stack['sparse_graph_ms']:.3f} ms as CUDA graphs "
            f"({stack['graph_speedup']:.2f}x), eager {stack['dense_eager_ms']:.2f} vs "
            f"{stack['sparse_eager_ms']:.2f} ms "
            f"({stack['eager_speedup']:.2f}x); greedy decode (eager) {stack['dense_decode_tok_s']:.0f} vs "
            f"{stack['sparse_decode_tok_s']:.0f} tok/s ({stack['decode_speedup']:.2f}x).\n"
        )
    return text
