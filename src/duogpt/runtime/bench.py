"""Benchmarks: dense torch GEMV against the dual-sparse kernel, side by side in one run.

Every record is measured in the same process, dense and sparse runs interleaved,
medians of many repeats; ``bandwidth_gbps`` is this machine's read bandwidth measured in
the same run (a large ``sum``), so ``sparse_gbps / bandwidth_gbps`` says how close the
kernel gets to the bound.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch

from duogpt import checkpoint as ckpt
from duogpt.config import PruneConfig
from duogpt.logs import muted
from duogpt.pruning.pipeline import prune_model
from duogpt.pruning.sparsify import install
from duogpt.report import markdown
from duogpt.runtime.format import DEFAULT_TILE_ROWS, SparseLinear, pack
from duogpt.runtime.generate import greedy
from duogpt.runtime.kernels.cpu import CpuSpMSpV
from duogpt.runtime.linear import to_sparse_runtime

LLAMA7B_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
DEFAULT_MODEL_SHAPES = [(576, 576), (1536, 576), (576, 1536)]
SPARSITIES = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.7, 0.5)]


def machine_info() -> dict:
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": flags or platform.processor(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def read_bandwidth_gbps(megabytes: int = 512, repeats: int = 7) -> float:
    """Read bandwidth: median time of summing a buffer much larger than the caches."""
    buf = torch.ones(megabytes * (1 << 20) // 4, dtype=torch.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return buf.numel() * 4 / statistics.median(times) / 1e9


def kernel_bytes(kernel: CpuSpMSpV, x: torch.Tensor) -> int:
    """Bytes the kernel must read for input ``x``: active segments' bitmaps, values and offsets."""
    sp = kernel.sp
    active = (x.reshape(-1, sp.shape[1]) != 0).any(0)
    seg_values = (sp.offsets[:, 1:] - sp.offsets[:, :-1])[:, active]
    words = sp.tile_rows // 64
    n_segments = int(active.sum()) * sp.n_tiles
    return int(seg_values.sum()) * sp.values.element_size() + n_segments * (words * 8 + 8) + x.numel() * 4


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def random_problem(shape, pw, px, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, k = shape
    W = torch.randn(n, k, generator=gen)
    if pw:
        W[torch.rand(n, k, generator=gen) < pw] = 0
    x = torch.randn(k, generator=gen)
    if px:
        x[torch.rand(k, generator=gen) < px] = 0
    return W.to(dtype), x


def _rotation(W: torch.Tensor, sp: SparseLinear, evict_mb: int):
    """Copies of the dense and the packed weight that together exceed ``evict_mb`` MiB, served in turn.

    Cycling through them means no call finds its weights in the caches (decode reads every
    layer once per token). Returns (dense_fn(x), sparse_fn(x), number of copies).
    """
    copies = min(1000, max(1, -(-evict_mb * (1 << 20) // (W.numel() * W.element_size()))))
    dense_ws = [W] + [W.clone() for _ in range(copies - 1)]
    kernels = [CpuSpMSpV(sp)] + [
        CpuSpMSpV(SparseLinear(sp.bitmaps.clone(), sp.values.clone(), sp.offsets.clone(), sp.shape, sp.tile_rows))
        for _ in range(copies - 1)
    ]
    turn = {"dense": 0, "sparse": 0}

    def dense_fn(x):
        turn["dense"] = (turn["dense"] + 1) % len(dense_ws)
        return torch.mv(dense_ws[turn["dense"]], x)

    def sparse_fn(x):
        turn["sparse"] = (turn["sparse"] + 1) % len(kernels)
        return kernels[turn["sparse"]](x)

    return dense_fn, sparse_fn, copies


def gemv_record(shape, dtype, pw: float, px: float, repeats: int, tile_rows: int, evict_mb: int) -> dict:
    """One shape x dtype x (p_w, p_x): medians of interleaved dense and sparse calls, bytes, error."""
    W, x = random_problem(shape, pw, px, dtype)
    xd = x.to(dtype)
    sp = pack(W, tile_rows=tile_rows)
    kernel = CpuSpMSpV(sp)
    dense_fn, sparse_fn, copies = _rotation(W, sp, evict_mb)
    dense_fn(xd)
    sparse_fn(x)
    dense_t, sparse_t = [], []
    for _ in range(repeats // 5):  # interleave: 5 dense, 5 sparse, ...
        dense_t += _time(lambda: dense_fn(xd), 5)
        sparse_t += _time(lambda: sparse_fn(x), 5)
    dense_ms, sparse_ms = statistics.median(dense_t) * 1e3, statistics.median(sparse_t) * 1e3
    need = kernel_bytes(kernel, x)
    return {
        "shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "p_w": pw,
        "p_x": px,
        "dense_ms": dense_ms,
        "sparse_ms": sparse_ms,
        "speedup": dense_ms / sparse_ms,
        "dense_gbps": W.numel() * W.element_size() / dense_ms / 1e6,
        "sparse_gbps": need / sparse_ms / 1e6,
        "sparse_bytes": need,
        "max_abs_error": float((kernel(x) - (W.float() @ x)).abs().max()),
        "isa": kernel.isa,
        "copies": copies,
    }


def gemv(
    shapes=None,
    dtypes=(torch.float32, torch.bfloat16),
    sparsities=None,
    repeats: int = 50,
    tile_rows: int = DEFAULT_TILE_ROWS,
    progress=print,
    evict_mb: int = 256,
) -> dict:
    """Dense ``torch`` GEMV vs the dual-sparse kernel for every shape x dtype x (p_w, p_x).

    Each side cycles through copies of its weights totalling at least ``evict_mb`` MiB.
    """
    bandwidth = read_bandwidth_gbps()
    records = []
    for shape in shapes or LLAMA7B_SHAPES + DEFAULT_MODEL_SHAPES:
        for dtype in dtypes:
            for pw, px in sparsities or SPARSITIES:
                rec = gemv_record(shape, dtype, pw, px, repeats, tile_rows, evict_mb)
                records.append(rec)
                progress(
                    f"{shape[0]}x{shape[1]} {rec['dtype']:>8} pw={pw} px={px}: dense {rec['dense_ms']:.3f} ms, "
                    f"sparse {rec['sparse_ms']:.3f} ms, {rec['speedup']:.2f}x, {rec['sparse_gbps']:.1f} GB/s"
                )
    return {
        "kind": "gemv",
        "machine": machine_info(),
        "bandwidth_gbps": bandwidth,
        "tile_rows": tile_rows,
        "repeats": repeats,
        "records": records,
    }


def interleaved_rates(sides: list, input_ids, new_tokens: int, rounds: int) -> tuple[list[float], list[list[int]]]:
    """Greedy decoding on each side in turn, ``rounds`` times: median tokens/s and last tokens per side.

    ``sides`` are (model, prepare) pairs; ``prepare()`` (or None) runs before each of that side's turns.
    """
    rates: list[list[float]] = [[] for _ in sides]
    tokens: list[list[int]] = [[] for _ in sides]
    for _ in range(rounds):
        for i, (model, prepare) in enumerate(sides):
            if prepare is not None:
                prepare()
            tokens[i], _, seconds = greedy(model, input_ids, new_tokens)
            rates[i].append((new_tokens - 1) / seconds)
    return [statistics.median(r) for r in rates], tokens


def decode_rates(dense, sparse, input_ids, new_tokens: int, rounds: int) -> tuple[float, float, list[int], list[int]]:
    """A masked-dense model and its sparse runtime, interleaved; (dense, sparse) tokens/s and tokens."""
    (d, s), (t_dense, t_sparse) = interleaved_rates([(dense, None), (sparse, None)], input_ids, new_tokens, rounds)
    return d, s, t_dense, t_sparse


def compare_decode(reference, candidate, input_ids, new_tokens: int, rounds: int) -> tuple[float, float]:
    """Two models' greedy decoding, interleaved; median tokens/s of each."""
    (base, fast), _ = interleaved_rates([(reference, None), (candidate, None)], input_ids, new_tokens, rounds)
    return base, fast


def random_llama(layers: int, dtype: torch.dtype, hidden=4096, ffn=11008, heads=32, vocab=32000, seed=0):
    """A randomly initialised Llama-7B-shaped stack of ``layers`` blocks."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        num_hidden_layers=layers,
        vocab_size=vocab,
        max_position_embeddings=1024,
    )
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def decode(
    checkpoint: str | None = None,
    layers: int = 4,
    dtype: torch.dtype = torch.bfloat16,
    new_tokens: int = 32,
    rounds: int = 3,
    progress=print,
    device: str = "cpu",
    **shape,
) -> dict:
    """Decode tokens/s of the dense vs the sparse runtime, on a pruned checkpoint and a 7B-shaped stack
    (both moved to ``device`` to run; on CUDA the sparse runtime decodes through the Triton kernel)."""
    records = []
    if checkpoint is not None:
        model, tokenizer, meta = ckpt.load(checkpoint, device=device, runtime="sparse")
        dense_model, _, _ = ckpt.load(checkpoint, device=device, runtime="dense")
        ids = tokenizer("The jury said it did find that many of Georgia's registration laws", return_tensors="pt")
        ids = ids["input_ids"].to(device)
        dense, sparse, t_dense, t_sparse = decode_rates(dense_model, model, ids, new_tokens, rounds)
        del dense_model
        records.append(
            _decode_record(f"checkpoint {checkpoint}", str(model.dtype), dense, sparse, t_dense, t_sparse, meta)
        )
        progress(_decode_line(records[-1]))
    model = random_llama(layers, dtype, **shape)
    gen = torch.Generator().manual_seed(0)
    samples = torch.randint(0, model.config.vocab_size, (4, 64), generator=gen)
    cfg = PruneConfig(method="magnitude", weight_sparsity=0.5, act_sparsity=0.5, nsamples=4, seqlen=64)
    with muted():  # no per-linear log lines for the synthetic stack
        result = prune_model(model, samples, cfg, progress=False)
    sparse_model = random_llama(layers, dtype, **shape)
    sparse_model.load_state_dict(model.state_dict())
    to_sparse_runtime(sparse_model)
    install(sparse_model, result.thresholds)
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=gen).to(device)
    model, sparse_model = model.to(device), sparse_model.to(device)
    dense, sparse, t_dense, t_sparse = decode_rates(model, sparse_model, ids, new_tokens, rounds)
    records.append(
        _decode_record(
            f"random Llama-7B-shaped stack, {layers} blocks, magnitude 50/50",
            str(dtype),
            dense,
            sparse,
            t_dense,
            t_sparse,
            None,
        )
    )
    progress(_decode_line(records[-1]))
    return {"kind": "decode", "machine": machine_info(), "new_tokens": new_tokens, "rounds": rounds, "records": records}


def _decode_record(model, dtype, dense, sparse, t_dense, t_sparse, meta) -> dict:
    same = next((i for i, (a, b) in enumerate(zip(t_dense, t_sparse, strict=True)) if a != b), None)
    return {
        "model": model,
        "dtype": dtype.replace("torch.", ""),
        "dense_tok_s": dense,
        "sparse_tok_s": sparse,
        "speedup": sparse / dense,
        "same_greedy_tokens": same is None,
        "first_divergence": same,
        "method": meta and meta["config"]["method"],
    }


def _decode_line(r: dict) -> str:
    return (
        f"{r['model']} ({r['dtype']}): dense {r['dense_tok_s']:.2f} tok/s, sparse {r['sparse_tok_s']:.2f} tok/s, "
        f"{r['speedup']:.2f}x, same tokens: {r['same_greedy_tokens']}"
    )


def gemv_markdown(result: dict) -> str:
    rows = [
        [
            f"{r['shape'][0]}x{r['shape'][1]}",
            r["dtype"],
            f"{r['p_w']:.1f}/{r['p_x']:.1f}",
            f"{r['dense_ms']:.3f}",
            f"{r['sparse_ms']:.3f}",
            f"{r['speedup']:.2f}x",
            f"{r['sparse_gbps']:.1f}",
            f"{r['sparse_gbps'] / result['bandwidth_gbps']:.0%}",
        ]
        for r in result["records"]
    ]
    head = ["shape", "dtype", "p_w/p_x", "dense ms", "sparse ms", "speedup", "sparse GB/s", "of bandwidth"]
    m = result["machine"]
    isa = result["records"][0]["isa"] if result["records"] else "n/a"
    return (
        f"GEMV, dense torch vs the dual-sparse kernel ({isa}). Machine: {m['cpu']}, {m['threads']} threads, "
        f"torch {m['torch']}; read bandwidth {result['bandwidth_gbps']:.1f} GB/s measured in the same run; "
        f"medians of {result['repeats']} interleaved calls per side.\n\n" + markdown(head, rows)
    )


def decode_markdown(result: dict) -> str:
    rows = [
        [
            r["model"],
            r["dtype"],
            f"{r['dense_tok_s']:.2f}",
            f"{r['sparse_tok_s']:.2f}",
            f"{r['speedup']:.2f}x",
            "yes" if r["same_greedy_tokens"] else f"no (from token {r['first_divergence']})",
        ]
        for r in result["records"]
    ]
    head = ["model", "dtype", "dense tok/s", "sparse tok/s", "speedup", "same greedy tokens"]
    m = result["machine"]
    return (
        "Decode, dense runtime (masked dense weights) vs sparse runtime (packed weights, spMspV kernel), two "
        f"models with the same sparsifiers. Machine: {m['cpu']}, {m['threads']} threads; "
        f"{result['new_tokens']} new tokens, median of {result['rounds']} interleaved rounds.\n\n"
        + markdown(head, rows)
    )


def gemv_gpu(
    shapes=None, sparsities=None, repeats: int = 200, tile_rows: int = DEFAULT_TILE_ROWS, progress=print
) -> dict:
    """bfloat16 dense ``torch`` GEMV vs the Triton kernel on a CUDA device (CUDA-event timing)."""
    from duogpt.runtime.kernels import triton_spmspv  # imports triton

    if not torch.cuda.is_available():
        raise RuntimeError("gemv_gpu needs a CUDA device")
    shapes = shapes or LLAMA7B_SHAPES
    sparsities = sparsities or SPARSITIES
    records = []
    for shape in shapes:
        for pw, px in sparsities:
            W, x = random_problem(shape, pw, px, torch.bfloat16)
            sp = pack(W, tile_rows=tile_rows)
            Wd, xd = W.cuda(), x.to(torch.bfloat16).cuda()
            spd = type(sp)(sp.bitmaps.cuda(), sp.values.cuda(), sp.offsets.cuda(), sp.shape, sp.tile_rows)
            xs = x.cuda()

            def run(fn):
                fn()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeats):
                    fn()
                end.record()
                torch.cuda.synchronize()
                return start.elapsed_time(end) / repeats

            dense_ms = run(lambda Wd=Wd, xd=xd: torch.mv(Wd, xd))
            sparse_ms = run(lambda spd=spd, xs=xs: triton_spmspv.spmspv(spd, xs))
            err = float((triton_spmspv.spmspv(spd, xs).cpu() - W.float() @ x).abs().max())
            rec = {
                "shape": list(shape),
                "dtype": "bfloat16",
                "p_w": pw,
                "p_x": px,
                "dense_ms": dense_ms,
                "sparse_ms": sparse_ms,
                "speedup": dense_ms / sparse_ms,
                "max_abs_error": err,
            }
            records.append(rec)
            progress(
                f"GPU {shape} pw={pw} px={px}: dense {dense_ms:.4f} ms, triton {sparse_ms:.4f} ms, "
                f"{rec['speedup']:.2f}x"
            )
    return {"kind": "gemv_gpu", "device": torch.cuda.get_device_name(), "repeats": repeats, "records": records}
