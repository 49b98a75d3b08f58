"""Resumable prunes: the state of a prune after each finished block, kept in a work directory.

After block ``i`` the work directory holds ``block-{i}.safetensors`` (that block's pruned
linear weights) and ``state.pt`` (the calibration streams entering block ``i + 1``, the
thresholds and reports so far, the RNG state). Both are replaced atomically, so a kill at
any moment leaves either the previous or the new state. A fingerprint of the model, the
samples and the settings guards against resuming a different run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from duogpt.errors import UsageError
from duogpt.files import atomic_path
from duogpt.models import Block
from duogpt.pruning.result import LinearReport, PruneResult

STATE_FILE = "state.pt"
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
    h.update(f"{torch.__version__} {torch.get_num_threads()}".encode())
    return h.hexdigest()


class WorkDir:
    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        """The saved state, or None when there is none; refuses a state from another run."""
        state_path = self.path / STATE_FILE
        if not state_path.is_file():
            return None
        try:
            state = torch.load(state_path, weights_only=True)
        except Exception as err:  # a damaged file: say so rather than resume from it
            raise UsageError(
                f"resumable state {state_path} is unreadable ({type(err).__name__}): delete {self.path} to start over"
            ) from None
        if state.get("fingerprint") != self.fingerprint:
            raise UsageError(
                f"resumable state in {self.path} belongs to a different run (model, samples, settings or thread "
                "count differ): rerun with the same settings, or delete it to start over"
            )
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
        """Record ``block`` as finished: its weights first, then the state that points past it."""
        self.path.mkdir(parents=True, exist_ok=True)
        weights = {name: lin.weight.data.contiguous().cpu() for name, lin in block.linears().items()}
        with atomic_path(self.path / f"block-{block.index}.safetensors") as tmp:
            save_file(weights, str(tmp))
        state = {
            "streams": {name: [h.cpu() for h in hs] for name, hs in streams.items()},
            "thresholds": dict(result.thresholds),
            "calib_act_sparsity": dict(result.calib_act_sparsity),
            "linears": [asdict(r) for r in result.linears],
            "seconds": seconds,
            "rng": torch.get_rng_state(),
            "fingerprint": self.fingerprint,
            "next_block": block.index + 1,
        }
        with atomic_path(self.path / STATE_FILE) as tmp:
            torch.save(state, tmp)

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
        torch.set_rng_state(saved["rng"])
        return first
