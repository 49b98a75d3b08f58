"""Memory and disk a prune will need, estimated before it starts, and checked against the machine.

Memory: the model (out of core: its non-block weights and one block), the calibration
streams the method carries between blocks (old and new while a block runs), one block's
group inputs (the dense stream keeps all four groups', the compressed stream one group's,
raw and sparsified, and the threshold's copies; out of core one chunk of each), the float64
statistics of the widest group (H, G, Xs Xd^T and the solver's factors) and the solver's
copies of the largest weight, plus a fixed allowance for the runtime. Sized to stay above
measured peaks (2-core Intel Xeon): the default model at 32 x 512 tokens peaked at 2211 MB
against an estimate of 2476 MB (the earlier estimate, 1762 MB, was under its peak); a
336M-parameter Llama at 16 x 256 tokens at 2537 MB in memory (estimate 2945) and 1654 MB out
of core (estimate 1956); a 24-block, 1024-wide Llama (1.42 GB, vocabulary 49152) at 32 x 512
tokens at 1351 MB out of core, group inputs in files (estimate 2211 MB). Disk: the checkpoint
(weights, packed sparse weights) and the resumable work directory (streams, block weights).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from duogpt.errors import UsageError
from duogpt.models import find_blocks
from duogpt.pruning.alpha_choice import HELD_SEQUENCES

RUNTIME_ALLOWANCE = 700 * 2**20  # Python, torch, transformers, tokenizer


@dataclass
class Estimate:
    memory: int
    disk: int
    streams: int

    def to_json(self) -> dict:
        return {"estimated_memory_mb": self.memory / 2**20, "estimated_disk_mb": self.disk / 2**20}


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def estimate(
    model,
    nsamples: int,
    seqlen: int,
    n_streams: int,
    with_work_dir: bool,
    offload: bool = False,
    batch_size: int = 8,
    held_out: bool = False,
) -> Estimate:
    """Works on a model whose weights are not loaded (meta tensors): only shapes and dtypes are used.

    ``held_out``: ``--alpha auto``'s held-out stream (old and new, ``alpha_choice.HELD_SEQUENCES``
    windows) and two copies of the largest group's weights (the original and the best solve so far)."""
    _, blocks = find_blocks(model)
    value_bytes = next(model.parameters()).element_size()
    model_bytes = _bytes(model.parameters())
    resident = model_bytes
    if offload:
        block_bytes = _bytes(blocks[0].module.parameters())
        resident = model_bytes - (len(blocks) - 1) * block_bytes
    hidden = model.config.hidden_size
    tokens = nsamples * seqlen
    stream_bytes = n_streams * tokens * hidden * value_bytes
    widths = [next(iter(g.values())).in_features for g in blocks[0].groups.values()]
    biggest = max(lin.weight.numel() for lin in blocks[0].linears().values())
    # float32 group inputs: the dense stream's four groups for the whole block, the compressed
    # stream's raw and sparsified inputs, and the threshold's concatenated |x| copies; out of
    # core they wait in files (spill.py): one chunk of each, the output-norm temporaries of the
    # widest output, the threshold's sample
    group_inputs = tokens * 4 * (2 * sum(widths) + 6 * max(widths))
    if offload:
        chunk = min(nsamples, batch_size) * seqlen
        widest_out = max(lin.out_features for lin in blocks[0].linears().values())
        group_inputs = chunk * 4 * 4 * max(widths) + 2 * chunk * 8 * widest_out + 2 * 4 * 2**22
    stats = 6 * 8 * max(widths) ** 2  # float64 H, G and the solver's k x k factors
    solver = 4 * 8 * biggest
    memory = resident + 2 * stream_bytes + group_inputs + stats + solver + RUNTIME_ALLOWANCE  # old and new streams
    if held_out:
        group_bytes = max(sum(lin.weight.numel() for lin in g.values()) for g in blocks[0].groups.values())
        memory += 2 * HELD_SEQUENCES * seqlen * hidden * value_bytes + 2 * group_bytes * value_bytes
    linear_bytes = sum(lin.weight.numel() for b in blocks for lin in b.linears().values()) * value_bytes
    disk = model_bytes + 50 * 2**20  # compact: a linear is stored packed only when that is smaller; + tokenizer
    if with_work_dir:
        disk += stream_bytes + linear_bytes
        if offload:  # one block's group inputs waiting in files
            disk += tokens * 4 * (sum(widths) + max(widths))
    return Estimate(memory, disk, stream_bytes)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where there is no such file."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_disk(path: str | Path) -> int:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def fits_in_memory(est: Estimate) -> bool:
    free = available_memory()
    return free is None or est.memory <= free or bool(os.environ.get("DUOGPT_SKIP_RESOURCE_CHECK"))


def mode(in_memory: Estimate, out_of_core: Estimate) -> str:
    """What ``duogpt prune --out DIR`` chooses on this machine: 'in memory', 'out of core' or 'does not fit'."""
    if fits_in_memory(in_memory):
        return "in memory"
    return "out of core" if fits_in_memory(out_of_core) else "does not fit"


def check(est: Estimate, out: str | Path | None) -> None:
    """Refuse, with advice, a prune that will not fit in memory or on disk."""
    if os.environ.get("DUOGPT_SKIP_RESOURCE_CHECK"):
        return
    gb = 2**30
    free = available_memory()
    if free is not None and est.memory > free:
        raise UsageError(
            f"this prune needs about {est.memory / gb:.1f} GB of memory and {free / gb:.1f} GB is available "
            f"(the calibration streams take {est.streams / gb:.1f} GB): use fewer --nsamples or a shorter --seqlen"
        )
    if out is not None:
        room = available_disk(Path(out).parent)
        if est.disk > room:
            raise UsageError(
                f"this prune will write about {est.disk / gb:.1f} GB and {room / gb:.1f} GB is free under "
                f"{Path(out).parent}: free some space or choose another --out"
            )
