"""Per-layer sparsity targets: uniform, or allocated under a decode-cost budget.

A prune's targets map every linear group ``layers.{i}.{group}`` (q/k/v, o, gate/up, down) to a
pair ``(p_w, p_x)``: the weight sparsity of the group's linears and the activation sparsity of
their shared input. The decode cost of a pair is the cost model's bytes per token
(``runtime/costmodel.py``): per linear ``(1 - p_x) (k * index + (1 - p_w) n k b)``, plus the
attention and head bytes no target changes. The estimated decode speedup is the dense model's
bytes over that.

``search`` (``--allocation search``) chooses the pairs before the prune, scored by the loss of the
whole model, so what one layer's sparsity does to the next layers' inputs is counted:

1. A shape: per group kind a weight and an activation offset, a weight and an activation depth
   slope, and a balance (weights down, activations up) give every group
   ``p = 0.5 + shift -/+ balance + offset[kind][group] + slope[kind] (i / (L - 1) - 0.5)``,
   clipped to ``[0, MAX_SPARSITY]``; ``shift`` is set by bisection so that the estimated
   speedup meets the target. Uniform is the shape of zeros.
2. Its score is the mean next-token loss on ``LOSS_SEQUENCES`` calibration sequences of the
   model with quick stand-ins for the prune: Wanda masks (``|W_ij| ||x_j||`` per row, column norms
   from ``STAT_SEQUENCES`` calibration sequences of the dense model) and activation thresholds
   at quantiles of the dense inputs. One score is one forward pass (bfloat16 autocast where the
   hardware has bfloat16 arithmetic); the masks are made one linear at a time inside it, so
   nothing beside the model is held but per-row thresholds at ``GRID`` sparsities.
3. Uniform and ``PRIOR`` are scored; from the better, coordinate descent: each number in turn
   moves by ``STEPS[0]`` up or down, a move is kept when the score falls; then the same with
   ``STEPS[1]``; at most ``MAX_EVALUATIONS`` scores in all.

The stand-ins are not the final solve (DuoGPT's perplexity at uniform 50/50 on the default
model is 86 where the stand-in model's is about 156), so the search ranks shapes, and the prune
that follows calibrates every group at its pair. Measured on the default model at the cost of
uniform 50/50 (docs/method.md), the shape it finds lowers DuoGPT's perplexity on both texts.
An earlier allocation that scored each block alone (its output error on dense inputs, a
greedy per block) lowered its own objective but raised the loss, and was dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from duogpt.errors import UsageError
from duogpt.hardware import fast_half_matmul
from duogpt.models import GROUPS, Block, find_blocks
from duogpt.pruning import sparsify
from duogpt.runtime import costmodel

MAX_SPARSITY = 0.9  # no group beyond this weight or activation sparsity
STEPS = (0.1, 0.05)  # the search's coordinate steps, coarse then fine
MAX_EVALUATIONS = 40  # proxy losses per search, uniform's included
STAT_SEQUENCES = 4  # calibration sequences the stand-in statistics come from
LOSS_SEQUENCES = 2  # calibration sequences the proxy loss is taken on (the last ones)
GRID = 50  # per-row Wanda thresholds at weight sparsity 0, 1/GRID, ...
SAMPLE = 16384  # input magnitudes kept per group and sequence for the activation quantiles
# A second start beside uniform: the direction every search on the default model agreed on (docs/method.md)
PRIOR = {"x.down": 0.2, "x.o": 0.1, "w.depth": 0.2, "x.depth": 0.1}
ALLOCATIONS = ("uniform", "search")

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
    most = uniform(model, MAX_SPARSITY, MAX_SPARSITY)
    _reachable(speedup, budget.speedup(model, most), f"every linear at {MAX_SPARSITY:.0%}/same")
    lo, hi = 0.0, MAX_SPARSITY
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


# --------------------------------------------------------------------------- search


class _Proxy:
    """The model with quick stand-ins for the prune (see the module docstring, step 2)."""

    def __init__(self, model: nn.Module, stat_ids: torch.Tensor, loss_ids: torch.Tensor):
        self.model, self.loss_ids = model, loss_ids
        _, blocks = find_blocks(model)
        self.linears = [
            (f"layers.{b.index}.{g}", lin) for b in blocks for g, ls in b.groups.items() for lin in ls.values()
        ]
        squares, magnitudes = self._dense_inputs(blocks, stat_ids)
        self.norms = {key: s.sqrt().float() for key, s in squares.items()}
        self.magnitudes = {key: torch.cat(m).sort().values for key, m in magnitudes.items()}
        self.cuts = {}  # linear -> (rows, GRID): the score of the first weight kept at sparsity j / GRID
        for key, lin in self.linears:
            k = lin.in_features
            ordered = self._scores(lin, key).sort(dim=1).values
            at = (torch.arange(GRID, device=ordered.device) * k / GRID).round().long().clamp(max=k - 1)
            self.cuts[lin] = ordered[:, at].contiguous()
            del ordered
        self._saved: dict[nn.Module, torch.Tensor] = {}

    def _dense_inputs(self, blocks, stat_ids):
        squares: dict[str, torch.Tensor] = {}
        magnitudes: dict[str, list[torch.Tensor]] = {}
        generator = torch.Generator().manual_seed(0)

        def recorder(key):
            def hook(_mod, args):
                x = args[0].reshape(-1, args[0].shape[-1])
                squares[key] = squares.get(key, 0) + x.double().pow(2).sum(0)
                flat = x.detach().abs().flatten().float()
                pick = torch.randint(flat.numel(), (min(SAMPLE, flat.numel()),), generator=generator)
                magnitudes.setdefault(key, []).append(flat[pick.to(flat.device)].cpu())

            return hook

        firsts = {f"layers.{b.index}.{g}": next(iter(ls.values())) for b in blocks for g, ls in b.groups.items()}
        handles = [lin.register_forward_pre_hook(recorder(key)) for key, lin in firsts.items()]
        try:
            for ids in stat_ids.split(1):
                self.model(input_ids=ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return squares, magnitudes

    def _scores(self, lin: nn.Linear, key: str) -> torch.Tensor:
        return lin.weight.detach().abs().float() * self.norms[key][None, :]

    def _threshold(self, key: str, p_x: float) -> float:
        values = self.magnitudes[key]
        count = round(p_x * values.numel())
        return float(values[count - 1]) if count else 0.0

    def _stand_in(self, key: str, lin: nn.Linear, p_w: float, p_x: float) -> list:
        tau, j = self._threshold(key, p_x), min(round(p_w * GRID), GRID - 1)
        cut = self.cuts[lin][:, j : j + 1]

        def before(mod, args):
            self._saved[mod] = mod.weight.data
            if j:
                mod.weight.data = mod.weight.data * (self._scores(mod, key) >= cut)
            return (sparsify.sparsify(args[0], tau),)

        def after(mod, _args, _out):
            mod.weight.data = self._saved.pop(mod)

        return [lin.register_forward_pre_hook(before), lin.register_forward_hook(after)]

    @torch.no_grad()
    def loss(self, targets: Targets) -> float:
        """Mean next-token loss on the loss sequences with every group at its stand-in pair."""
        handles = [h for key, lin in self.linears for h in self._stand_in(key, lin, *targets[key])]
        try:
            with _bfloat16_if_fast(self.loss_ids.device):
                out = self.model(input_ids=self.loss_ids, labels=self.loss_ids, use_cache=False)
            return float(out.loss)
        finally:
            for h in handles:
                h.remove()
            for mod, weight in self._saved.items():
                mod.weight.data = weight
            self._saved.clear()


def _bfloat16_if_fast(device: torch.device):
    """bfloat16 autocast where the hardware has bfloat16 arithmetic (CUDA, AVX-512 BF16 / AMX CPUs),
    float32 elsewhere: the search needs the ranking of shapes, not digits, and scores about 1.4x
    faster on such a CPU."""
    fast = device.type in ("cpu", "cuda") and fast_half_matmul(torch.bfloat16, device.type)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast)


def uniform_shape(blocks: list[Block]) -> dict[str, float]:
    """The shape of zeros (uniform sparsities), its numbers in the order the descent tries them."""
    kinds = [f"{kind}.{g}" for kind in "wx" for g in blocks[0].groups]
    return dict.fromkeys(["balance", "w.depth", "x.depth", *kinds], 0.0)


def placed(blocks: list[Block], shape: dict[str, float], shift: float) -> Targets:
    """Every group's pair from a shape and a shift (the module docstring, step 1)."""
    last = max(len(blocks) - 1, 1)
    out = {}
    for b in blocks:
        depth = b.index / last - 0.5
        for g in b.groups:
            pair = (
                0.5 + shift + sign * shape["balance"] + shape[f"{kind}.{g}"] + shape[f"{kind}.depth"] * depth
                for kind, sign in (("w", -1), ("x", 1))
            )
            out[f"layers.{b.index}.{g}"] = tuple(round(min(max(p, 0.0), MAX_SPARSITY), 6) for p in pair)
    return out


def at_cost(model: nn.Module, shape: dict[str, float], speedup: float, budget: Budget) -> Targets | None:
    """The shape at the least shift that reaches ``speedup``; None if no shift does."""
    _, blocks = find_blocks(model)
    lo, hi = -1.0, 1.0
    if budget.speedup(model, placed(blocks, shape, hi)) < speedup:
        return None
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if budget.speedup(model, placed(blocks, shape, mid)) < speedup else (lo, mid)
    return placed(blocks, shape, hi)


@torch.no_grad()
def search(
    model: nn.Module, samples: torch.Tensor, speedup: float, budget: Budget, progress: bool = False
) -> tuple[Targets, dict]:
    """Targets that reach ``speedup`` with the least proxy loss found (the module docstring), and a
    record of the search: the proxy loss of uniform and of the result, scores taken, the shape."""
    _, blocks = find_blocks(model)
    most = budget.speedup(model, uniform(model, MAX_SPARSITY, MAX_SPARSITY))
    _reachable(speedup, most, f"every group at {MAX_SPARSITY:.0%}/{MAX_SPARSITY:.0%}")
    device = next(model.parameters()).device
    proxy = _Proxy(model, samples[:STAT_SEQUENCES].to(device), samples[-LOSS_SEQUENCES:].to(device))
    shape = uniform_shape(blocks)
    bar = tqdm(total=MAX_EVALUATIONS, desc="allocation search", disable=not progress, leave=False)

    def score(candidate):
        bar.update()
        targets = at_cost(model, candidate, speedup, budget)
        return (math.inf, None) if targets is None else (proxy.loss(targets), targets)

    best, targets = score(shape)
    record = {"proxy_loss_uniform": best}
    prior = {**shape, **{k: v for k, v in PRIOR.items() if k in shape}}
    loss, at = score(prior)
    if loss < best:
        shape, best, targets = prior, loss, at
    shape, best, targets, evaluations = _descend(score, shape, best, targets, MAX_EVALUATIONS - 2)
    bar.close()
    record.update(proxy_loss=best, evaluations=evaluations + 2, shape=shape)
    return targets, record


def _descend(score, shape: dict[str, float], best: float, targets: Targets, limit: int):
    """Coordinate descent over the shape's numbers, at most ``limit`` scores (the module docstring, step 3)."""
    evaluations = 0
    for step in STEPS:
        improved = True
        while improved and evaluations < limit:
            improved = False
            for name in shape:
                for sign in (1, -1):
                    if evaluations >= limit:
                        break
                    trial = {**shape, name: round(shape[name] + sign * step, 6)}
                    loss, at = score(trial)
                    evaluations += 1
                    if loss < best:
                        shape, best, targets, improved = trial, loss, at, True
                        break
    return shape, best, targets, evaluations


def summary(targets: Targets) -> dict:
    """Mean targets per group kind (q/k/v, o, gate/up, down), for logs and reports."""
    out = {}
    for g in GROUPS:
        pairs = [v for k, v in targets.items() if k.endswith(f".{g}")]
        if pairs:
            out[g] = tuple(sum(p[i] for p in pairs) / len(pairs) for i in (0, 1))
    return out
