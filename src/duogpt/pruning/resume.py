"""Resumable prunes: the state of a prune after finished blocks, kept in a work directory.

After block ``i`` the work directory holds ``block-{i}.safetensors`` (that block's pruned
linear weights). Every few blocks it also records a checkpoint of the run: ``streams.safetensors``
(the calibration streams entering the next block, in their own dtype, and the RNG state) and
``state.json`` (thresholds and reports so far, the next block, a fingerprint). The streams
are written when they are small (under ``SMALL_STATE``) or when the blocks since the last
checkpoint took at least ten times as long as writing it, so a large calibration set costs
at most about a tenth more; a resume redoes the blocks after the last checkpoint, and since
a prune is deterministic its result is the same. Every file is replaced atomically
(``state.json`` last), so a kill at any moment leaves the previous or the new checkpoint. A
fingerprint of the model, the samples and the settings guards against resuming a different run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from duogpt.errors import UsageError
from duogpt.files import atomic_path
from duogpt.logs import log
from duogpt.memory import peak_rss_mb
from duogpt.models import Block
from duogpt.pruning.distributed import barrier, share_object, world
from duogpt.pruning.result import LinearReport, PruneResult

STATE_FILE = "state.json"
STREAMS_FILE = "streams.safetensors"
SMALL_STATE = 256 * 2**20  # streams below this are saved after every block
WORK_SUFFIX = ".duogpt-work"


def work_dir_for(out: str | Path) -> Path:
    """Where a prune writing ``out`` keeps its resumable state."""
    out = Path(out)
    return out.with_name(out.name + WORK_SUFFIX)


def fingerprint(model, samples: torch.Tensor, config: dict) -> str:
    """Hash of what must match for a resumed prune to equal an uninterrupted one."""
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True).encode())
    h.update(samples.cpu().numpy().tobytes())
    h.update(str(model.config.to_dict()).encode())
    loaded = [(n, p) for n, p in sorted(model.state_dict().items()) if not p.is_meta]
    for name, p in loaded[:4]:  # a cheap check that the weights are the same
        h.update(name.encode())
        h.update(p.detach().float().flatten()[:1024].cpu().numpy().tobytes())
    h.update(f"{torch.__version__} {torch.get_num_threads()} {world()[1]}".encode())
    return h.hexdigest()


def streams_file() -> str:
    """This process's streams file (one per rank when there are several)."""
    rank, size = world()
    return STREAMS_FILE if size == 1 else f"streams-rank{rank}.safetensors"


PHASES = ("forward", "statistics", "solve", "io", "alpha")


class WorkDir:
    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.since = time.perf_counter()  # when the last checkpoint was written
        self.write_seconds = 0.0  # how long writing it took
        self.state_bytes = 0  # the largest checkpoint so far

    def load(self) -> dict | None:
        """The saved state (with its streams), or None when there is none; refuses a state from another run."""
        state_path = self.path / STATE_FILE
        if not state_path.is_file():
            return None
        try:
            state = json.loads(state_path.read_text())
            tensors = load_file(str(self.path / streams_file()))
        except Exception as err:  # a damaged file: say so rather than resume from it
            raise UsageError(
                f"resumable state in {self.path} is unreadable ({type(err).__name__}): delete it to start over"
            ) from None
        if state.get("fingerprint") != self.fingerprint:
            raise UsageError(
                f"resumable state in {self.path} belongs to a different run (model, samples, settings or thread "
                "count differ): rerun with the same settings, or delete it to start over"
            )
        state["rng"] = tensors.pop("rng")
        state["streams"] = {}
        for key in sorted(tensors, key=lambda k: (k.split(".")[0], int(k.split(".")[1]))):
            state["streams"].setdefault(key.split(".")[0], []).append(tensors[key])
        return state

    def block_weights(self, index: int) -> dict[str, torch.Tensor]:
        path = self.path / f"block-{index}.safetensors"
        try:
            return load_file(str(path))
        except Exception as err:
            raise UsageError(
                f"resumable state {path} is missing or damaged ({type(err).__name__}): delete {self.path} to start over"
            ) from None

    def save(self, block: Block, streams: dict, result: PruneResult, seconds: float) -> None:
        """Record ``block`` as finished: its weights, and a checkpoint of the run when it is due.

        With several processes rank 0 writes the weights and ``state.json``, every rank its own
        streams, and rank 0 decides for all whether the checkpoint is due.
        """
        rank, _ = world()
        self.path.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            weights = {name: lin.weight.data.contiguous().cpu() for name, lin in block.linears().items()}
            with atomic_path(self.path / f"block-{block.index}.safetensors") as tmp:
                save_file(weights, str(tmp))
        size = sum(h.numel() * h.element_size() for hs in streams.values() for h in hs)
        due = size < SMALL_STATE or time.perf_counter() - self.since >= 10 * self.write_seconds
        if not share_object(due, 0):
            return  # redoing these blocks on a resume costs less than a tenth more than writing now
        t0 = time.perf_counter()
        tensors = {f"{name}.{i}": h.contiguous().cpu() for name, hs in streams.items() for i, h in enumerate(hs)}
        tensors["rng"] = torch.get_rng_state()
        with atomic_path(self.path / streams_file()) as tmp:
            save_file(tensors, str(tmp))
        barrier()  # every rank's streams are in place before the state points past this block
        if rank != 0:
            self.since, self.write_seconds = time.perf_counter(), time.perf_counter() - t0
            return
        state = {
            "thresholds": result.thresholds,
            "calib_act_sparsity": result.calib_act_sparsity,
            "linears": [asdict(r) for r in result.linears],
            "seconds": seconds,
            "block_seconds": result.block_seconds,
            "peak_rss_mb": max(peak_rss_mb(), result.resources.get("peak_rss_mb_before_resume") or 0.0),
            "fingerprint": self.fingerprint,
            "next_block": block.index + 1,
            "targets": result.targets,  # a resume prunes to the same targets without searching again
            "allocation": result.allocation,
            "alpha_losses": result.alpha_losses,
        }
        with atomic_path(self.path / STATE_FILE) as tmp:
            tmp.write_text(json.dumps(state))
        self.since, self.write_seconds = time.perf_counter(), time.perf_counter() - t0
        self.state_bytes = max(self.state_bytes, size)
        log.debug("state after block %d: %.1f MB of streams in %.2f s", block.index, size / 2**20, self.write_seconds)

    def restore_block(self, block: Block, device) -> None:
        """Put a finished block's pruned weights back (its other weights are the model's own)."""
        weights = self.block_weights(block.index)
        for name, linear in block.linears().items():
            if name not in weights or weights[name].shape != linear.weight.shape:
                raise UsageError(f"resumable state in {self.path} does not fit the model: delete it to start over")
            linear.weight.data = weights[name].to(device=device, dtype=linear.weight.dtype)

    def restore(self, saved: dict, streams: dict, result: PruneResult, device) -> int:
        """Put a saved state back: streams, thresholds, reports, RNG. Returns the next block."""
        first = int(saved["next_block"])
        for name in streams:
            streams[name] = [h.to(device) for h in saved["streams"][name]]
        result.thresholds.update(saved["thresholds"])
        result.calib_act_sparsity.update(saved["calib_act_sparsity"])
        result.linears.extend(LinearReport(**r) for r in saved["linears"])
        result.alpha_losses.update(saved.get("alpha_losses", {}))
        result.block_seconds[:] = saved.get("block_seconds", [])  # the finished blocks' timings, from any session
        for record in result.block_seconds:  # a state is saved inside its last block, before that block's total
            record.setdefault("total", sum(v for key, v in record.items() if key in PHASES))
        result.resources["peak_rss_mb_before_resume"] = saved.get("peak_rss_mb")
        torch.set_rng_state(saved["rng"])
        return first
