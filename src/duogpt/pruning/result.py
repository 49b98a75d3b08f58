"""What a prune reports: per-linear sparsity and error, thresholds, time (written to duogpt.json)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from duogpt.config import PruneConfig


@dataclass
class LinearReport:
    name: str
    weight_sparsity: float
    rel_error: float | None
    seconds: float
    alpha: float | None = None  # DuoGPT: the residual scale used (chosen per linear with --alpha auto)
    ridge: float | None = None


@dataclass
class PruneResult:
    config: PruneConfig
    thresholds: dict[str, float]
    linears: list[LinearReport] = field(default_factory=list)
    calib_act_sparsity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resources: dict = field(default_factory=dict)
    bos_token_id: int | None = None  # the token every calibration sample started with
    block_seconds: list[dict[str, float]] = field(default_factory=list)  # per block: forward, statistics, solve, io
    targets: dict[str, tuple[float, float]] = field(default_factory=dict)  # group -> (p_w, p_x) it was pruned to
    estimated_decode_speedup: float | None = None  # the cost model's, at the targets
    allocation: dict | None = None  # --allocation search: proxy losses, scores taken, the shape found
    alpha_losses: dict[str, dict[str, float]] = field(default_factory=dict)  # --alpha auto: group -> alpha -> loss

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the time spent inside to ``phase`` of the current block."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.block_seconds:
                current = self.block_seconds[-1]
                current[phase] = current.get(phase, 0.0) + time.perf_counter() - t0

    def to_json(self) -> dict:
        return {
            "config": asdict(self.config),
            "thresholds": self.thresholds,
            "calib_act_sparsity": self.calib_act_sparsity,
            "linears": [asdict(r) for r in self.linears],
            "prune_seconds": self.seconds,
            "resources": self.resources,
            "calib_bos_token_id": self.bos_token_id,
            "block_seconds": self.block_seconds,
            "estimated_decode_speedup": self.estimated_decode_speedup,
            "targets": {k: {"weight_sparsity": w, "act_sparsity": x} for k, (w, x) in self.targets.items()},
            "allocation": self.allocation,
            "alpha_losses": self.alpha_losses,
        }
