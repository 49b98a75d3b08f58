"""Per-layer sparsity targets: uniform, or allocated under a decode-cost budget.

A prune's targets map every linear group ``layers.{i}.{group}`` (q/k/v, o, gate/up, down) to a
pair ``(p_w, p_x)``: the weight sparsity of the group's linears and the activation sparsity of
their shared input. The decode cost of a pair is the cost model's bytes per token
(``runtime/costmodel.py``): per linear ``(1 - p_x) (k * index + (1 - p_w) n k b)``, plus the
attention and head bytes no target changes. The estimated decode speedup is the dense model's
bytes over that.

``greedy`` (``--allocation greedy``) chooses the pairs by measurement on a few calibration
sequences of the dense model, before the prune:

1. Per block, from its dense inputs: the output error of the block as a function of its groups'
   sparsities, ``e = ||block(h) - block_dense(h)||^2 / ||block_dense(h)||^2`` (the relative
   change of the residual stream, which the next block's norm sees), with a quick stand-in for
   the final solve: Wanda masks (``|W_ij| ||x_j||`` per row) for the weights and magnitude
   thresholds (quantiles of the dense inputs) for the activations.
2. A path per block: from all dense, repeatedly take the step (one group's weight and
   activation sparsity raised together by ``STEP``, up to ``MAX_SPARSITY``; see ``TIED``) with
   the least error added per byte saved; only the changed group's step is measured again (the
   others keep their last measurement), so a path costs about one block pass per step.
3. Across blocks: walk every block's path, each time taking the block whose next stretch of
   path (to the point of best slope, so a costly step followed by cheap ones still counts)
   adds the least error per byte saved, until the model's bytes meet the budget.

The sum of relative block errors stands in for the model's loss; blocks are measured on dense
inputs, and the prune that follows (DuoGPT's target is the dense output) absorbs what earlier
blocks changed. Measured on the default model at the cost of uniform 50/50 (docs/method.md),
this stand-in does not track the loss: it moves sparsity into the middle blocks, whose
updates are small next to the residual stream, and the perplexity is worse than uniform's
(114.3 against 86.4; raising weight and activation sparsity separately, 110.0). The stand-in
also overstates weight-pruning error next to the real solver's (no compensation), which is why
the steps are tied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from duogpt.errors import UsageError
from duogpt.models import GROUPS, Block, find_blocks
from duogpt.pruning import sparsify
from duogpt.pruning.statistics import capture_inputs, group_input
from duogpt.runtime import costmodel

STEP = 0.1
MAX_SPARSITY = 0.8
PROXY_SEQUENCES = 2  # calibration sequences the greedy measures on
TIED = True  # one step raises a group's weight and activation sparsity together
KINDS = (0,) if TIED else (0, 1)
ALLOCATIONS = ("uniform", "greedy")

Targets = dict[str, tuple[float, float]]  # 'layers.{i}.{group}' -> (weight sparsity, activation sparsity)


def uniform(model: nn.Module, p_w: float, p_x: float) -> Targets:
    _, blocks = find_blocks(model)
    return {f"layers.{b.index}.{g}": (p_w, p_x) for b in blocks for g in b.groups}


def group_bytes(block: Block, group: str, p_w: float, p_x: float, value_bytes: int) -> float:
    """Decode bytes per token of one group's linears at (p_w, p_x)."""
    return sum(
        costmodel.sparse_linear_bytes(lin.out_features, lin.in_features, value_bytes, p_w, p_x)
        for lin in block.groups[group].values()
    )


@dataclass
class Budget:
    """The model's decode bytes: dense, the parts no target changes, and the linears at given targets."""

    dense: float
    fixed: float
    value_bytes: int

    @staticmethod
    def of(model: nn.Module, context: int = 512) -> Budget:
        """From shapes and dtype alone (an out-of-core skeleton will do)."""
        _, blocks = find_blocks(model)
        value_bytes = next(model.parameters()).element_size()
        attention, head = costmodel.fixed_bytes(model, context)
        linears = sum(lin.weight.numel() for b in blocks for lin in b.linears().values()) * value_bytes
        return Budget(attention + head + linears, attention + head, value_bytes)

    def total(self, model: nn.Module, targets: Targets) -> float:
        _, blocks = find_blocks(model)
        linears = sum(
            group_bytes(b, g, *targets[f"layers.{b.index}.{g}"], self.value_bytes) for b in blocks for g in b.groups
        )
        return self.fixed + linears

    def speedup(self, model: nn.Module, targets: Targets) -> float:
        return self.dense / self.total(model, targets)


def uniform_for_speedup(model: nn.Module, speedup: float, budget: Budget) -> Targets:
    """Equal weight and activation sparsity everywhere, the least that reaches ``speedup``."""
    most = uniform(model, MAX_SPARSITY + STEP, MAX_SPARSITY + STEP)
    _reachable(speedup, budget.speedup(model, most), f"every linear at {MAX_SPARSITY + STEP:.0%}/same")
    lo, hi = 0.0, MAX_SPARSITY + STEP
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if budget.speedup(model, uniform(model, mid, mid)) < speedup else (lo, mid)
    return uniform(model, hi, hi)


def _reachable(speedup: float, best: float, how: str) -> None:
    if speedup > best:
        raise UsageError(
            f"target speedup {speedup:g} is out of reach: the largest reachable is {best:.2f} ({how}); "
            "ask for less, or prune a model whose head and attention are a smaller share of its bytes"
        )


# --------------------------------------------------------------------------- greedy


@dataclass
class _Point:
    bytes: float
    error: float
    state: dict[str, tuple[float, float]]  # group -> (p_w, p_x)


class _BlockProbe:
    """One block on a few dense-stream tokens: its output error at given group sparsities."""

    def __init__(self, block: Block, hidden: torch.Tensor, kwargs: dict):
        self.block, self.hidden, self.kwargs = block, hidden, kwargs
        self.target = block.module(hidden, **kwargs)
        self.target = self.target[0] if isinstance(self.target, tuple) else self.target
        self.scale = float(self.target.double().pow(2).sum())
        self.inputs = {g: group_input(block, g, hidden, kwargs) for g in block.groups}
        self.original = {(g, n): lin.weight.data for g, lins in block.groups.items() for n, lin in lins.items()}
        self.ranks = {}
        for g, lins in block.groups.items():
            norms = self.inputs[g].double().pow(2).sum(0).sqrt().float()
            for n, lin in lins.items():
                order = (lin.weight.data.abs().float() * norms[None, :]).argsort(dim=1)
                small = torch.int16 if lin.in_features < 2**15 else torch.int32
                self.ranks[(g, n)] = order.argsort(dim=1).to(small)  # rank of each weight in its row, lowest first
                del order
        self.magnitudes = {g: x.abs().flatten().sort().values for g, x in self.inputs.items()}

    def threshold(self, group: str, p_x: float) -> float:
        values = self.magnitudes[group]
        count = round(p_x * values.numel())
        return float(values[count - 1]) if count else 0.0

    def error(self, state: dict[str, tuple[float, float]]) -> float:
        handles = []
        try:
            for g, (p_w, p_x) in state.items():
                tau = self.threshold(g, p_x)
                for n, lin in self.block.groups[g].items():
                    k = lin.in_features
                    keep = self.ranks[(g, n)] >= round(p_w * k)
                    lin.weight.data = self.original[(g, n)] * keep
                    if tau > 0:
                        hook = lin.register_forward_pre_hook(lambda _m, a, t=tau: (sparsify.sparsify(a[0], t),))
                        handles.append(hook)
            out = self.block.module(self.hidden, **self.kwargs)
            out = out[0] if isinstance(out, tuple) else out
            return float((out - self.target).double().pow(2).sum()) / max(self.scale, 1e-30)
        finally:
            for h in handles:
                h.remove()
            for (g, n), w in self.original.items():
                self.block.groups[g][n].weight.data = w


def block_path(probe: _BlockProbe, value_bytes: int) -> list[_Point]:
    """The block's greedy path from all dense to every group at MAX_SPARSITY (see the module docstring)."""
    block = probe.block
    state = {g: (0.0, 0.0) for g in block.groups}

    def cost(st):
        return sum(group_bytes(block, g, pw, px, value_bytes) for g, (pw, px) in st.items())

    def stepped(st, g, kind):
        pw, px = st[g]
        if kind == 0:
            new = (min(pw + STEP, MAX_SPARSITY), px) if not TIED else (min(pw + STEP, MAX_SPARSITY),) * 2
        else:
            new = (pw, min(px + STEP, MAX_SPARSITY))
        return None if new == st[g] else {**st, g: (round(new[0], 6), round(new[1], 6))}

    path = [_Point(cost(state), probe.error(state), state)]
    measured: dict[tuple[str, int], float] = {}
    while True:
        for g in block.groups:
            for kind in KINDS:
                nxt = stepped(state, g, kind)
                if nxt is not None and (g, kind) not in measured:
                    measured[(g, kind)] = probe.error(nxt)
        here = path[-1]
        options = []
        for (g, kind), err in measured.items():
            nxt = stepped(state, g, kind)
            if nxt is not None:
                options.append(((err - here.error) / max(here.bytes - cost(nxt), 1e-9), g, kind, err, nxt))
        if not options:
            return path
        _, g, _, err, state = min(options, key=lambda o: o[0])
        path.append(_Point(cost(state), err, state))
        for kind in KINDS:
            measured.pop((g, kind), None)


def combine(paths: list[list[_Point]], budget_bytes: float, fixed: float) -> list[int]:
    """Per block, how far along its path to go so that the total bytes meet ``budget_bytes``."""
    at = [0] * len(paths)
    total = fixed + sum(p[0].bytes for p in paths)
    while total > budget_bytes:
        best = None
        for b, path in enumerate(paths):
            here = path[at[b]]
            for j in range(at[b] + 1, len(path)):
                saved = here.bytes - path[j].bytes
                if saved > 0:
                    slope = (path[j].error - here.error) / saved
                    if best is None or slope < best[0]:
                        best = (slope, b, j)
        if best is None:
            break
        _, b, j = best
        total -= paths[b][at[b]].bytes - paths[b][j].bytes
        at[b] = j
    return at


@torch.no_grad()
def greedy(model: nn.Module, samples: torch.Tensor, speedup: float, budget: Budget, progress=None) -> Targets:
    """Targets that reach ``speedup`` with the least summed block error (see the module docstring)."""
    _, blocks = find_blocks(model)
    proxy = samples[:PROXY_SEQUENCES].to(next(model.parameters()).device)
    hidden, kwargs = capture_inputs(model, [proxy])
    h = hidden[0]
    paths = []
    for block in blocks if progress is None else progress(blocks):
        probe = _BlockProbe(block, h, kwargs[block.index][0])
        paths.append(block_path(probe, budget.value_bytes))
        h = probe.target
        del probe
    best = budget.fixed + sum(p[-1].bytes for p in paths)
    _reachable(speedup, budget.dense / best, f"every group at {MAX_SPARSITY:.0%}/{MAX_SPARSITY:.0%}")
    at = combine(paths, budget.dense / speedup, budget.fixed)
    targets = {}
    for block, path, j in zip(blocks, paths, at, strict=True):
        for g, pair in path[j].state.items():
            targets[f"layers.{block.index}.{g}"] = pair
    return targets


def summary(targets: Targets) -> dict:
    """Mean targets per group kind (q/k/v, o, gate/up, down), for logs and reports."""
    out = {}
    for g in GROUPS:
        pairs = [v for k, v in targets.items() if k.endswith(f".{g}")]
        if pairs:
            out[g] = tuple(sum(p[i] for p in pairs) / len(pairs) for i in (0, 1))
    return out
