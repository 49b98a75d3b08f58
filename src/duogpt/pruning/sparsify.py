"""Run-time activation sparsity: magnitude thresholds on the inputs of each linear group.

A sparsifier zeroes the entries of its input with ``|x| <= threshold``; one threshold
per input (q/k/v share theirs, as do gate/up). Thresholds are calibrated so that a
fraction ``p_x`` of calibration entries is zeroed (as in TEAL). Sparsifiers run as
forward pre-hooks on the consuming linears, so checkpoints stay plain ``transformers``
models; ``duogpt.json`` carries the thresholds. A linear of the sparse runtime takes its
sparsifier itself instead (``attach_sparsifier``): its CPU kernel applies the threshold while
it reads the input, so a decode step spends no pass and no hook on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from duogpt import checks
from duogpt.errors import UsageError
from duogpt.models import GROUPS, find_blocks

MAX_QUANTILE_SAMPLES = 1 << 22


class ThresholdSample:
    """The |x| a threshold is taken from, gathered chunk by chunk (no copy of all the inputs: a 7B
    down_proj's are 360 MB at 16 x 512 tokens).

    ``sizes``: every chunk's entry count, in chunk order. Up to ``MAX_QUANTILE_SAMPLES`` entries in
    all, every |x|; above, a seeded uniform sample of positions in the concatenated chunks. Each
    position is filled by whoever adds the chunk that holds it, so processes that each add their
    own chunks and sum the result (``threshold(reduce=...)``) see exactly what one process adding
    every chunk would.
    """

    def __init__(self, sizes: list[int], seed: int = 0):
        self.sizes, total = list(sizes), sum(sizes)
        self.starts = [sum(self.sizes[:c]) for c in range(len(self.sizes))]
        self.picks = None
        if total > MAX_QUANTILE_SAMPLES:
            gen = torch.Generator().manual_seed(seed)
            self.picks = torch.randint(0, total, (MAX_QUANTILE_SAMPLES,), generator=gen)
        self.values = torch.zeros(total if self.picks is None else MAX_QUANTILE_SAMPLES)

    def add(self, chunk: int, x: torch.Tensor) -> None:
        """Chunk number ``chunk`` (any shape; ``sizes[chunk]`` entries)."""
        flat, start = x.detach().reshape(-1), self.starts[chunk]
        if flat.numel() != self.sizes[chunk]:
            raise ValueError(f"chunk {chunk} has {flat.numel()} entries, not {self.sizes[chunk]}")
        if self.picks is None:
            self.values[start : start + flat.numel()] = flat.abs().float().cpu()
            return
        inside = (self.picks >= start) & (self.picks < start + flat.numel())
        self.values[inside] = flat[(self.picks[inside] - start).to(flat.device)].abs().float().cpu()

    def threshold(self, p: float, reduce=lambda t: t) -> float:
        """The k-th smallest gathered |x| with k = round(p * n) (``reduce`` first, e.g. a sum over processes)."""
        return kth_threshold(reduce(self.values), p)


def calibrate_threshold(chunks: Iterable[torch.Tensor], p: float, seed: int = 0) -> float:
    """Threshold tau with a fraction ``p`` of the entries satisfying ``|x| <= tau``.

    Exact (k-th smallest |x|) up to 2^22 entries; above that, on a seeded uniform sample.
    """
    checks.fraction("activation sparsity", p)
    if p == 0:
        return 0.0
    chunks = list(chunks)
    sample = ThresholdSample([c.numel() for c in chunks], seed)
    for i, c in enumerate(chunks):
        sample.add(i, c)
    return sample.threshold(p)


def kth_threshold(values: torch.Tensor, p: float) -> float:
    """The k-th smallest of ``values`` (|x|) with k = round(p * n), at least 1."""
    k = max(1, round(p * values.numel()))
    return float(torch.kthvalue(values, k).values)


def sparsify(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero entries with ``|x| <= threshold``: ``hardshrink``, one pass (NaN stays NaN, as it would in
    ``x.masked_fill(x.abs() <= threshold, 0)``)."""
    return F.hardshrink(x, threshold) if threshold > 0 else x


def sparsify_(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``sparsify`` in place (the same bits), for inputs nothing else holds."""
    return x.masked_fill_(x.abs() <= threshold, 0) if threshold > 0 else x


class ActivationSparsifier:
    """One input's sparsifier with counters of how many entries it saw and zeroed."""

    def __init__(self, name: str, threshold: float, sparsify_prefill: bool = True):
        self.name = name
        self.threshold = threshold
        self.sparsify_prefill = sparsify_prefill
        self.enabled = True
        self.calls = 0
        self.counting = False  # counting costs a pass over the activation: on only while measuring
        self.total = 0  # entries seen since the last reset, while counting
        self._nonzero: torch.Tensor | int = 0  # of them left nonzero: a tensor, so counting never waits on a device
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # only while the group's linears run
        self._pending = 0
        self._kernel_key: tuple | None = None  # (threshold, dtype) behind _kernel_value
        self._kernel_value = 0.0
        self.handles: list = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self._last is not None and self._last[0] is x:  # q/k/v (gate/up) share one input
            out = self._last[1]
            self._pending -= 1
            if self._pending <= 0:
                self._last = None  # the group's last linear has it: hold no activation past it
            return out
        if not self.enabled or (not self.sparsify_prefill and x.dim() == 3 and x.shape[1] > 1):
            out = x
        else:
            out = sparsify(x, self.threshold)
            if self.counting:
                self._nonzero = self._nonzero + out.bool().sum()
                self.total += out.numel()
        self._pending = len(self.handles) - 1  # the other linears that will ask for the same input
        self._last = (x, out) if self._pending > 0 else None
        return out

    def kernel_threshold(self, x: torch.Tensor) -> float | None:
        """For a kernel that zeroes ``|x| <= t`` itself (in float32): the ``t`` this call needs (0: x stays as
        it is), rounded to x's dtype as ``sparsify`` applies it, or None when the call must go through
        ``__call__`` (while counting)."""
        if self.counting:
            return None
        self.calls += 1
        if not self.enabled or (not self.sparsify_prefill and x.dim() == 3 and x.shape[1] > 1):
            return 0.0
        key = (self.threshold, x.dtype)
        if self._kernel_key != key:  # hardshrink compares in x's dtype: the threshold rounded to it, once
            self._kernel_key = key
            self._kernel_value = float(torch.tensor(self.threshold, dtype=torch.float32).to(x.dtype))
        return self._kernel_value

    def forget(self) -> None:
        """Drop the cached last input (frees its memory)."""
        self._last = None

    @property
    def zeros(self) -> int:
        return self.total - int(self._nonzero)

    def reset(self) -> None:
        self.total, self._nonzero = 0, 0
        self._last = None

    @property
    def measured(self) -> float | None:
        return self.zeros / self.total if self.total else None


def install(model: nn.Module, thresholds: dict[str, float], sparsify_prefill: bool = True) -> dict:
    """Install sparsifiers named 'layers.{i}.{group}' with the given thresholds.

    Returns the model's sparsifier registry (also at ``model.duogpt_sparsifiers``).
    """
    registry = getattr(model, "duogpt_sparsifiers", None)
    if registry is None:
        registry = {}
        model.duogpt_sparsifiers = registry
    _, blocks = find_blocks(model)
    by_name = {f"layers.{b.index}.{g}": (b, g) for b in blocks for g in GROUPS}
    for name, tau in thresholds.items():
        if name not in by_name:
            raise UsageError(
                f"threshold for {name!r} does not match the model (blocks layers.0..{len(blocks) - 1}): "
                "the thresholds belong to another model; re-run duogpt prune on this one"
            )
        block, group = by_name[name]
        if name in registry:
            registry[name].threshold = float(tau)
            continue
        sp = ActivationSparsifier(name, float(tau), sparsify_prefill)
        registry[name] = sp
        for linear in block.groups[group].values():
            attach = getattr(linear, "attach_sparsifier", None)  # the sparse runtime's linears apply it themselves
            sp.handles.append(
                attach(sp)
                if attach is not None
                else linear.register_forward_pre_hook(lambda _mod, args, sp=sp: (sp(args[0]), *args[1:]))
            )
    return registry


def uninstall(model: nn.Module) -> None:
    """Remove every sparsifier from ``model`` (activations dense again)."""
    for sp in registry(model).values():
        for handle in sp.handles:
            handle.remove()
    model.duogpt_sparsifiers = {}


def registry(model: nn.Module) -> dict[str, ActivationSparsifier]:
    return getattr(model, "duogpt_sparsifiers", None) or {}


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Run the model with its sparsifiers switched off."""
    sps = registry(model).values()
    before = [sp.enabled for sp in sps]
    for sp in sps:
        sp.enabled = False
    try:
        yield
    finally:
        for sp, state in zip(sps, before, strict=True):
            sp.enabled = state
            sp.forget()


def reset_counters(model: nn.Module, counting: bool = True) -> None:
    """Zero every sparsifier's counters and count from now on (``counting``) or not."""
    for sp in registry(model).values():
        sp.reset()
        sp.counting = counting


def measured_sparsity(model: nn.Module) -> tuple[float | None, dict[str, float | None]]:
    """(overall, per sparsifier) fraction of zero inputs seen since the last reset."""
    sps = registry(model)
    zeros = sum(sp.zeros for sp in sps.values())
    total = sum(sp.total for sp in sps.values())
    return (zeros / total if total else None), {name: sp.measured for name, sp in sps.items()}
