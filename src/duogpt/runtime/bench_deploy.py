"""A pruned checkpoint as deployed, against the dense model it came from, side by side in one run.

- **size**: the directory's bytes against the same weights stored dense in the same dtype
  (``duogpt.json``), and against the source checkpoint's own bytes when it is local;
- **memory**: each model loaded in a fresh process of its own. ``resident_mb``: resident
  memory over the process before loading, once loaded and one decode step has run (the
  weights it must hold: ``transformers`` maps a dense checkpoint lazily, so its memory shows
  only once the weights are used); ``peak_mb``: the peak over loading and a prefill of the
  prompt;
- **speed**: prefill of a ``prompt_tokens`` prompt and decode through ``generate()`` with the
  KV cache, for the sparse runtime, the masked dense model with the same sparsifiers, and
  the source model (dense, no sparsifiers: what runs without duogpt); medians of rounds
  taken in turn.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from duogpt import checkpoint, corpus
from duogpt.errors import UsageError
from duogpt.models import resolve_model_path
from duogpt.report import markdown
from duogpt.runtime.bench import machine_info
from duogpt.runtime.generate import generate

_MEMORY = """
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from duogpt import checkpoint, memory
from duogpt.models import load_model
path, runtime, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
with torch.device("meta"):  # import the model's code before the baseline
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
base = memory.rss_mb()
if runtime == "source":
    model, _ = load_model(path)
else:
    model, _, _ = checkpoint.load(path, runtime=runtime)
with torch.no_grad():
    model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=False)
resident = memory.rss_mb() - base
with torch.no_grad():
    model(input_ids=torch.zeros(1, tokens, dtype=torch.long), use_cache=False)
print(json.dumps({"resident_mb": resident, "peak_mb": memory.peak_rss_mb() - base}))
"""


def memory_record(path: str, runtime: str, prompt_tokens: int) -> dict:
    """Resident and peak memory of loading ``path`` as ``runtime`` ('source': plain transformers), in a new process."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY, path, runtime, str(prompt_tokens)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"measuring the memory of {path} ({runtime}) failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _prefill_seconds(model, ids: torch.Tensor) -> float:
    from transformers import DynamicCache

    with torch.no_grad():
        t0 = time.perf_counter()
        model(input_ids=ids, cache=DynamicCache(), use_cache=True)
        return time.perf_counter() - t0


def speed_records(sides: dict, tokenizer, prompt_tokens: int, new_tokens: int, rounds: int) -> dict:
    """Prefill seconds and generate() decode tokens/s per side, medians of ``rounds`` taken in turn."""
    text = corpus.load_text(corpus.DEFAULT_SOURCE, "eval")
    ids = corpus.tokenize(tokenizer, text)[:prompt_tokens][None]
    prompt = "The jury said it did find that many of Georgia's registration laws"
    times: dict[str, dict[str, list]] = {name: {"prefill": [], "decode": []} for name in sides}
    for _ in range(rounds):
        for name, model in sides.items():
            times[name]["prefill"].append(_prefill_seconds(model, ids))
            gen = generate(model, tokenizer, prompt, new_tokens, min_new_tokens=new_tokens)
            times[name]["decode"].append(gen.decode_tokens_per_second)
    return {
        name: {
            "prefill_seconds": statistics.median(t["prefill"]),
            "prefill_tok_s": prompt_tokens / statistics.median(t["prefill"]),
            "decode_tok_s": statistics.median(t["decode"]),
        }
        for name, t in times.items()
    }


def deploy(path: str, prompt_tokens: int = 512, new_tokens: int = 32, rounds: int = 3, progress=print) -> dict:
    """Size, memory and speed of the checkpoint at ``path`` against its source model."""
    meta = checkpoint.read_meta(path)
    if meta is None or checkpoint.layout_of(path) != "compact":
        raise UsageError(f"{path} is not a compact duogpt checkpoint: bench deploy measures what duogpt prune writes")
    source = resolve_model_path(meta.get("base_model"))
    if not Path(source).is_dir():
        raise UsageError(f"the source model {source!r} is not a local directory: the comparison needs its files")
    size = dict(meta["size"], source_bytes=sum(f.stat().st_size for f in Path(source).glob("*.safetensors")))
    progress(f"size: {size['ratio']:.3f}x the dense weights")
    memory = {name: memory_record(p, rt, prompt_tokens) for name, p, rt in _sides(path, source)}
    progress("memory: " + ", ".join(f"{k} {v['resident_mb']:.0f} MB" for k, v in memory.items()))
    sparse, tokenizer, _ = checkpoint.load(path, runtime="sparse")
    masked, _, _ = checkpoint.load(path, runtime="dense")
    plain, _, _ = checkpoint.load_any(source)
    speed = speed_records(
        {"sparse": sparse, "masked_dense": masked, "source": plain}, tokenizer, prompt_tokens, new_tokens, rounds
    )
    return {
        "kind": "deploy",
        "checkpoint": str(path),
        "source": source,
        "dtype": str(sparse.dtype).replace("torch.", ""),
        "machine": machine_info(),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "size": size,
        "memory": memory,
        "speed": speed,
    }


def _sides(path: str, source: str) -> list[tuple[str, str, str]]:
    return [("sparse", path, "sparse"), ("masked_dense", path, "dense"), ("source", source, "source")]


def deploy_markdown(result: dict) -> str:
    size, mem, speed, m = result["size"], result["memory"], result["speed"], result["machine"]
    lines = [
        "# The deployed model against its source",
        "",
        f"Deployed checkpoint `{result['checkpoint']}` ({result['dtype']}) against its source `{result['source']}`. "
        f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}.",
        "",
        f"Directory: {size['directory_bytes'] / 2**20:.1f} MB, {size['ratio']:.3f}x the same weights stored dense "
        f"({size['dense_bytes'] / 2**20:.1f} MB); the source checkpoint's files: {size['source_bytes'] / 2**20:.1f} MB "
        f"({size['directory_bytes'] / max(size['source_bytes'], 1):.3f}x).",
        "",
        "",
    ]
    rows = []
    for name, label in (("sparse", "sparse runtime"), ("masked_dense", "masked dense"), ("source", "source (dense)")):
        ratio = speed[name]["decode_tok_s"] / speed["source"]["decode_tok_s"]
        rows.append(
            [
                label,
                f"{mem[name]['resident_mb']:.0f} MB ({mem[name]['resident_mb'] / mem['source']['resident_mb']:.2f}x)",
                f"{mem[name]['peak_mb']:.0f} MB",
                f"{speed[name]['prefill_seconds'] * 1e3:.0f} ms "
                f"({speed[name]['prefill_seconds'] / speed['source']['prefill_seconds']:.2f}x)",
                f"{speed[name]['decode_tok_s']:.2f} ({ratio:.2f}x)",
            ]
        )
    head = [
        "model",
        "resident after load",
        "peak (load + prefill)",
        f"prefill {result['prompt_tokens']} tok",
        "decode tok/s",
    ]
    note = (
        f"\nMemory: each model in a fresh process, over the process before loading. Decode: generate(), "
        f"{result['new_tokens']} new tokens; medians of {result['rounds']} rounds taken in turn; ratios against the "
        "source model.\n"
    )
    return "\n".join(lines) + markdown(head, rows) + note
