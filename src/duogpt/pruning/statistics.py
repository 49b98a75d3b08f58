"""Statistics collection: what runs the model to see a block's inputs, and what it accumulates.

Inputs of a linear group are ``(tokens, k)`` matrices per chunk (the rows are tokens); the
statistics are sums over chunks in float64:

- ``H = X X^T`` of the inputs the weights are fit to (for DuoGPT the sparsified ``Xs``),
- ``G = (Xd - Xs) Xs^T`` (DuoGPT's correction), from the differences directly: forming it as
  ``Xd Xs^T - H`` would cancel in float32 and hold a third k x k matrix; the error uses the
  cross term ``Xs Xd^T = G^T + H``,
- ``dense_H = Xd Xd^T`` (the dense-Hessian ablation), ``norms2_j = ||X_j||^2`` (Wanda),
- ``out_norm2[linear] = ||W Xd||^2`` over all tokens (the scale of the dense target).

Every sum may weigh each sequence's first token (the attention sink) by ``sink_weight`` instead
of 1: its rows of ``Xs`` and ``Xd`` are scaled by ``sqrt(sink_weight)`` before they are added
(``weigh_sink_``), so ``H``, ``G``, ``norms2`` and ``out_norm2`` are the sums over tokens with that
weight on the sink, the same as repeating it ``sink_weight`` times.

``Accumulator`` adds one chunk at a time (``pruning/groups.py`` feeds it), so no more than a
chunk of a group's inputs need be in memory. With several processes every sum also runs over
the other ranks' chunks (``duogpt.pruning.distributed``). The solves that use them are pure functions
(``duogpt.pruning.solvers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from duogpt.models import GROUPS, Block, find_blocks
from duogpt.pruning.distributed import all_sum, all_sum_floats
from duogpt.pruning.spill import ChunkStore


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


class _Recorder(nn.Module):
    """Stands in for a decoder layer: records its input and keyword arguments."""

    def __init__(self, slot: list, last: bool):
        super().__init__()
        self.slot, self.last = slot, last

    def forward(self, hidden_states, *args, **kwargs):
        self.slot.append((hidden_states, kwargs))
        if self.last:
            raise _Stop
        return hidden_states


@torch.no_grad()
def capture_inputs(model: nn.Module, chunks: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Hidden states entering the first block, and every block's call arguments, per chunk."""
    layers, _ = find_blocks(model)
    originals = list(layers)
    slots: list[list] = [[] for _ in originals]
    for i in range(len(layers)):
        layers[i] = _Recorder(slots[i], last=i == len(layers) - 1)
    try:
        for ids in chunks:
            try:
                model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    hidden = [h for h, _ in slots[0]]
    kwargs = [[kw for _, kw in slot] for slot in slots]
    return hidden, kwargs


def run_block(layer: nn.Module, hidden: list[torch.Tensor], kwargs: list[dict]) -> list[torch.Tensor]:
    """The block's outputs, chunk by chunk."""
    return [layer(h, **kw) for h, kw in zip(hidden, kwargs, strict=True)]


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).float()


def weigh_sink_(rows: torch.Tensor, seqlen: int, weight: float) -> torch.Tensor:
    """Scale, in place, the rows of ``rows`` ((sequences * seqlen, k), sequence-major) that are a
    sequence's first token by ``sqrt(weight)``: in ``X^T X`` that token then counts ``weight`` times."""
    if weight != 1:
        rows.view(-1, seqlen, rows.shape[-1])[:, 0] *= weight**0.5
    return rows


def group_input(block: Block, group: str, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """Inputs of ``group`` (before its sparsifier) for one chunk, as (tokens, k) float32; the block
    runs only up to that group."""
    first = next(iter(block.groups[group].values()))
    seen: list[torch.Tensor] = []

    def hook(_mod, args):
        seen.append(_as_rows(args[0]))
        raise _Stop

    handle = first.register_forward_pre_hook(hook, prepend=True)
    try:
        block.module(hidden, **kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


@dataclass
class DenseRun:
    """One full pass of a not yet pruned block: outputs, every group's inputs ``Xd`` chunk by chunk
    (in ``store``, under ``xd.GROUP.CHUNK``), ``||W Xd||^2`` per part."""

    outputs: list[torch.Tensor]
    store: ChunkStore
    out_norm2: dict[str, float]

    def take(self, group: str, chunk: int) -> torch.Tensor:
        """``Xd`` of ``group`` for one chunk, handed over once: the run holds it no longer.

        (Recomputing each group's ``Xd`` instead, with the original weights, held 280 MB less
        between groups on a 24-block 1024-wide model but not at the peak, and took 13% longer.)"""
        return self.store.take(f"xd.{group}.{chunk}")


def dense_run(
    block: Block, hidden: list[torch.Tensor], kwargs: list[dict], store: ChunkStore, sink_weight: float = 1.0
) -> DenseRun:
    """Run the (unpruned) block fully, recording what DuoGPT's dense target needs (``||W Xd||^2`` with
    each sequence's first token weighted by ``sink_weight``, as the statistics weigh it)."""
    run = DenseRun([], store, {})
    handles, made = [], dict.fromkeys(GROUPS, 0)

    def keep(group: str, x: torch.Tensor) -> None:
        store.put(f"xd.{group}.{made[group]}", _as_rows(x))
        made[group] += 1

    for group, linears in block.groups.items():
        first = next(iter(linears.values()))
        handles.append(first.register_forward_pre_hook(lambda _m, args, g=group: keep(g, args[0])))
        for lname, linear in linears.items():

            def norm_hook(mod, _args, out, parts=block.parts(lname, linear)):
                out = out if mod.bias is None else out - mod.bias
                for p in parts:
                    rows = out if len(parts) == 1 else out[..., p.start : p.stop]
                    norm2 = rows.double().pow(2).sum()
                    if sink_weight != 1:
                        norm2 += (sink_weight - 1) * rows[:, 0].double().pow(2).sum()
                    run.out_norm2[p.name] = run.out_norm2.get(p.name, 0.0) + float(norm2)

            handles.append(linear.register_forward_hook(norm_hook))
    try:
        run.outputs = run_block(block.module, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    names = sorted(run.out_norm2)
    run.out_norm2 = dict(zip(names, all_sum_floats([run.out_norm2[n] for n in names]), strict=True))
    return run


def _add_product(total: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``total + X^T Y``: the float32 product added in place in float64 (the first one widened)."""
    part = x.T @ y
    if total is None:
        return part.double()
    for r in range(0, part.shape[0], 1024):  # widening makes a copy: keep it to 1024 rows
        total[r : r + 1024] += part[r : r + 1024]
    return total


@dataclass
class Statistics:
    """A group's calibration statistics (None where the method does not collect them)."""

    H: torch.Tensor | None = None
    G: torch.Tensor | None = None
    dense_H: torch.Tensor | None = None
    norms2: torch.Tensor | None = None
    out_norm2: dict[str, float] = field(default_factory=dict)


class Accumulator:
    """The statistics named in ``needed``, summed chunk by chunk in chunk order: the same bits as
    one pass over all the chunks, with one chunk of the inputs in memory at a time."""

    def __init__(self, needed: frozenset[str]):
        self.needed, self.stats = needed, Statistics()

    def add(self, fit: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        """One chunk: the inputs the weights are fit to and (DuoGPT) the same tokens' dense inputs."""
        st = self.stats
        if "H" in self.needed:
            st.H = _add_product(st.H, fit, fit)
        if "G" in self.needed:  # (Xd - Xs) Xs^T, without the cancellation of Xs Xd^T - H
            st.G = _add_product(st.G, dense - fit, fit)
        if "norms2" in self.needed:
            part = (fit.double() ** 2).sum(0)
            st.norms2 = part if st.norms2 is None else st.norms2 + part
        if "dense_H" in self.needed:
            st.dense_H = _add_product(st.dense_H, dense, dense)

    def finish(self, out_norm2: dict) -> Statistics:
        """The sums over every process's chunks."""
        st = self.stats
        for name in ("H", "G", "dense_H", "norms2"):
            if getattr(st, name) is not None:
                setattr(st, name, all_sum(getattr(st, name)))
        st.out_norm2 = out_norm2
        self.stats = Statistics()
        return st


def output_error(W, What, H, G=None, target_norm2=None, rows: int = 1024) -> float:
    """Relative output error from statistics (no pass over the data).

    One stream: ||(What - W) X||^2 / ||W X||^2 with H = X X^T.
    Two streams: ||What Xs - W Xd||^2 / ||W Xd||^2 with H = Xs Xs^T and G, where the cross
    term Xs Xd^T = G^T + H. Sums run over ``rows`` output rows at a time (float64), so the
    temporaries are a few (rows x k) matrices, not (n x k).
    """
    num = den = 0.0
    for r in range(0, W.shape[0], rows):
        w, what = W[r : r + rows].double(), What[r : r + rows].double()
        if G is None:
            d = what - w
            num += float(((d @ H) * d).sum())
            den += float(((w @ H) * w).sum())
            continue
        what_h = what @ H
        num += float((what_h * what).sum() - 2 * ((what @ G.T + what_h) * w).sum())
    if G is None:
        return num / max(den, 1e-30)
    return max(num + target_norm2, 0.0) / max(target_norm2, 1e-30)
