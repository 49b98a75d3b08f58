"""Benchmarks: decode tokens/s of dense vs sparse models, side by side in one run, and the
helpers the GEMV benchmark (bench_gemv.py) shares: machine facts, read bandwidth, random problems.
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
from duogpt.runtime.generate import greedy
from duogpt.runtime.kernels.cpu import CpuSpMSpV, cpu_model
from duogpt.runtime.linear import decode_paths, to_sparse_runtime

LLAMA7B_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
DEFAULT_MODEL_SHAPES = [(576, 576), (1536, 576), (576, 1536)]
SPARSITIES = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.7, 0.5)]


def machine_info() -> dict:
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "caches": cache_sizes(),
    }


def cache_sizes() -> dict[str, int]:
    """Bytes per cache level of CPU 0 ('L1d', 'L2', 'L3', ...), from sysfs; empty where unknown."""
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    for i in range(8):
        try:
            with open(f"{base}/index{i}/level") as f:
                level = f.read().strip()
            with open(f"{base}/index{i}/type") as f:
                kind = f.read().strip()
            with open(f"{base}/index{i}/size") as f:
                size = f.read().strip()
        except OSError:
            break
        if kind == "Instruction":
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        out[f"L{level}" + ("d" if kind == "Data" else "")] = int(size.rstrip("KMG")) * units.get(size[-1], 1)
    return out


def read_bandwidth_gbps(megabytes: int | None = None, repeats: int = 7) -> float:
    """Read bandwidth: the faster of torch's ``sum`` and the kernel library's streaming sum over a
    buffer of twice the last-level cache (at least 512 MiB), median of ``repeats`` each. The roofline
    comparisons divide by it, so it is taken as high as measured (the harder baseline)."""
    from duogpt.runtime.kernels.cpu import stream_sum

    if megabytes is None:
        megabytes = max(512, 2 * max(cache_sizes().values(), default=0) >> 20)
    buf = torch.ones(megabytes * (1 << 20) // 4, dtype=torch.float32)
    best = 0.0
    for reader in (lambda: buf.sum(), lambda: stream_sum(buf)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            reader()
            times.append(time.perf_counter() - t0)
        best = max(best, buf.numel() * 4 / statistics.median(times) / 1e9)
    return best


def kernel_bytes(kernel: CpuSpMSpV, x: torch.Tensor) -> int:
    """Bytes the kernel must read for input ``x``: active segments' bitmaps, values and offsets."""
    sp = kernel.sp
    active = (x.reshape(-1, sp.shape[1]) != 0).any(0)
    seg_values = (sp.offsets[:, 1:] - sp.offsets[:, :-1])[:, active]
    words = sp.tile_rows // 64
    n_segments = int(active.sum()) * sp.n_tiles
    return int(seg_values.sum()) * sp.values.element_size() + n_segments * (words * 8 + 8) + x.numel() * 4


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


def three_way_rates(dense, sparse, input_ids, new_tokens: int, rounds: int) -> dict:
    """Dense weights through transformers' own layer forward and head; dense weights through duogpt's decode
    paths for dense weights (``decode_paths``: the lean decode step, the head by the dense kernel; the
    strongest dense path here short of the roofline); and the sparse runtime. Interleaved, in turn."""
    sides = [(dense, lambda: decode_paths(dense, False)), (dense, lambda: decode_paths(dense)),
             (sparse, None)]  # fmt: skip
    rates, tokens = interleaved_rates(sides, input_ids, new_tokens, rounds)
    decode_paths(dense)
    return {"rates": tuple(rates), "tokens": tuple(tokens)}


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


def pruned_stack(layers: int, dtype: torch.dtype, gen: torch.Generator, **shape):
    """A random 7B-shaped stack pruned 50/50 by magnitude (calibration drawn from ``gen``): the masked
    dense model and its sparse runtime, both with the activation sparsifiers and the decode paths for dense
    weights (``decode_paths``), on the CPU."""
    model = random_llama(layers, dtype, **shape)
    samples = torch.randint(0, model.config.vocab_size, (4, 64), generator=gen)
    cfg = PruneConfig(method="magnitude", weight_sparsity=0.5, act_sparsity=0.5, nsamples=4, seqlen=64)
    with muted():  # no per-linear log lines for the synthetic stack
        result = prune_model(model, samples, cfg, progress=False)
    sparse_model = random_llama(layers, dtype, **shape)
    sparse_model.load_state_dict(model.state_dict())
    to_sparse_runtime(sparse_model)
    decode_paths(model)
    install(sparse_model, result.thresholds)
    decode_paths(sparse_model)  # the linears' paths depend on their sparsifiers
    return model, sparse_model


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
    bandwidth = read_bandwidth_gbps() if device == "cpu" else None
    if checkpoint is not None:
        model, tokenizer, meta = ckpt.load(checkpoint, device=device, runtime="sparse")
        dense_model, _, _ = ckpt.load(checkpoint, device=device, runtime="dense")
        ids = tokenizer("The jury said it did find that many of Georgia's registration laws", return_tensors="pt")
        ids = ids["input_ids"].to(device)
        measured = three_way_rates(dense_model, model, ids, new_tokens, rounds)
        bytes_per_token = linear_bytes(dense_model)
        del dense_model
        records.append(_decode_record(f"checkpoint {checkpoint}", str(model.dtype), measured, meta))
        records[-1].update(_roofline(bytes_per_token, bandwidth, records[-1]["sparse_tok_s"]))
        progress(_decode_line(records[-1]))
    gen = torch.Generator().manual_seed(0)
    model, sparse_model = pruned_stack(layers, dtype, gen, **shape)
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=gen).to(device)
    model, sparse_model = model.to(device), sparse_model.to(device)
    measured = three_way_rates(model, sparse_model, ids, new_tokens, rounds)
    name = f"random Llama-7B-shaped stack, {layers} blocks, magnitude 50/50"
    records.append(_decode_record(name, str(dtype), measured, None))
    records[-1].update(_roofline(linear_bytes(model), bandwidth, records[-1]["sparse_tok_s"]))
    progress(_decode_line(records[-1]))
    return {
        "kind": "decode",
        "machine": machine_info(),
        "bandwidth_gbps": bandwidth,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "records": records,
    }


def linear_bytes(model) -> int:
    """Bytes of every linear weight (the head included): what a dense decode step reads at least."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))


def _roofline(bytes_per_token: int, bandwidth: float | None, sparse_tok_s: float) -> dict:
    """The dense memory roofline (bandwidth / weight bytes per token) and the sparse runtime against it."""
    if bandwidth is None:
        return {}
    roofline = bandwidth * 1e9 / bytes_per_token
    return {
        "dense_bytes_per_token": bytes_per_token,
        "roofline_tok_s": roofline,
        "roofline_speedup": sparse_tok_s / roofline,
    }


def _decode_record(model, dtype, measured: dict, meta) -> dict:
    """``dense_tok_s``: dense weights, transformers' forward and head; ``dense_lean_tok_s``: dense weights, the
    lean decode step and the head by the dense kernel; ``same_greedy_tokens``: all three sides chose the same
    tokens."""
    (dense, lean, sparse), (t_dense, t_lean, t_sparse) = measured["rates"], measured["tokens"]
    same = next((i for i, (a, b, c) in enumerate(zip(t_dense, t_lean, t_sparse, strict=True)) if not a == b == c), None)
    return {
        "model": model,
        "dtype": dtype.replace("torch.", ""),
        "dense_tok_s": dense,
        "dense_lean_tok_s": lean,
        "sparse_tok_s": sparse,
        "speedup": sparse / dense,
        "speedup_vs_lean_dense": sparse / lean,
        "same_greedy_tokens": same is None,
        "first_divergence": same,
        "method": meta and meta["config"]["method"],
    }


def _decode_line(r: dict) -> str:
    roof = f", dense roofline {r['roofline_tok_s']:.2f} tok/s" if "roofline_tok_s" in r else ""
    return (
        f"{r['model']} ({r['dtype']}): dense {r['dense_tok_s']:.2f} tok/s (lean {r['dense_lean_tok_s']:.2f}), "
        f"sparse {r['sparse_tok_s']:.2f} tok/s, {r['speedup']:.2f}x ({r['speedup_vs_lean_dense']:.2f}x the lean "
        f"dense){roof}, same tokens: {r['same_greedy_tokens']}"
    )


def decode_markdown(result: dict) -> str:
    rows = [
        [
            r["model"],
            r["dtype"],
            f"{r['dense_tok_s']:.2f}",
            f"{r['dense_lean_tok_s']:.2f}",
            f"{r['sparse_tok_s']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['speedup_vs_lean_dense']:.2f}x",
            f"{r['roofline_tok_s']:.2f}" if "roofline_tok_s" in r else "",
            f"{r['roofline_speedup']:.2f}x" if "roofline_speedup" in r else "",
            "yes" if r["same_greedy_tokens"] else f"no (from token {r['first_divergence']})",
        ]
        for r in result["records"]
    ]
    head = ["model", "dtype", "dense tok/s", "lean dense tok/s", "sparse tok/s", "vs dense", "vs lean dense",
            "dense roofline tok/s", "vs roofline", "same greedy tokens"]  # fmt: skip
    m = result["machine"]
    bw = result.get("bandwidth_gbps")
    roof = (
        f" Dense roofline: read bandwidth ({bw:.1f} GB/s, measured in the same run) / bytes of all linear "
        "weights, the head included (a dense decode step reads at least these)."
        if bw
        else ""
    )
    return (
        "Decode, dense runtime (masked dense weights) vs sparse runtime (packed weights, spMspV kernel), with the "
        "same sparsifiers. 'dense': transformers' layer forward and LM head; 'lean dense': the dense weights "
        "through the lean decode step and the head by the dense kernel, as the sparse runtime runs them (the "
        f"strongest dense path here short of the roofline). Machine: {m['cpu']}, {m['threads']} threads; "
        f"{result['new_tokens']} new tokens, median of {result['rounds']} interleaved rounds.{roof}\n\n"
        + markdown(head, rows)
    )
