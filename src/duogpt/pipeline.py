"""Block-by-block calibration: carry the calibration streams through the model and prune.

Streams (each a list of per-chunk hidden states entering the current block):

- ``comp``: the compressed model as it will run (pruned blocks, sparsifiers on). Every
  method's thresholds are calibrated here, as the pipeline reaches each group, so they
  are the final model's thresholds.
- ``dense`` (DuoGPT): the original model; gives ``Xd`` for ``G = (Xd - Xs) Xs^T``.
- ``calib`` (SparseGPT, Wanda with activation sparsity): the pruned model without
  sparsifiers, the stream these methods calibrate their weights on. With p_x = 0 it is
  the ``comp`` stream.

Within a block, groups are pruned in order q/k/v -> o -> gate/up -> down; each group's
inputs come from a block run that already uses the pruned earlier groups. Only one
block's activations are held at a time.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from duogpt import solvers, sparsify
from duogpt.errors import UsageError
from duogpt.models import GROUPS, Block, find_blocks

log = logging.getLogger("duogpt")


@dataclass
class PruneConfig:
    """Settings of one prune (all recorded in duogpt.json)."""

    method: str = "duogpt"
    weight_sparsity: float = 0.5
    act_sparsity: float = 0.5
    pattern: str = "unstructured"
    alpha: float = 0.25  # best of the ablation in docs/ablation-alpha.md at 30/30 and 50/50
    ridge: float = 0.1
    correction: str = "target"
    hessian: str = "sparse"  # DuoGPT: H from the compressed inputs, or "dense" (no correction)
    calib: str = "brown"
    nsamples: int = 32
    seqlen: int = 512
    seed: int = 0
    batch_size: int = 8
    blocksize: int = 128
    percdamp: float = 0.01
    sparsify_prefill: bool = True

    def validate(self) -> None:
        if self.method not in solvers.METHODS:
            raise UsageError(f"unknown method {self.method!r}: use one of {', '.join(solvers.METHODS)}")
        if not 0.0 <= self.weight_sparsity < 1.0:
            raise UsageError(f"weight sparsity {self.weight_sparsity} is outside [0, 1): pass a fraction such as 0.5")
        sparsify.check_act_sparsity(self.act_sparsity)
        solvers.parse_pattern(self.pattern)
        if self.hessian not in ("sparse", "dense"):
            raise UsageError(f"unknown hessian {self.hessian!r}: use sparse or dense")
        if self.correction not in solvers.CORRECTIONS:
            raise UsageError(f"unknown correction {self.correction!r}: use one of {', '.join(solvers.CORRECTIONS)}")
        for name in ("nsamples", "seqlen", "batch_size", "blocksize"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
        if self.alpha < 0 or self.ridge < 0 or self.percdamp < 0:
            raise UsageError("--alpha, --ridge and --percdamp must be non-negative")


@dataclass
class LinearReport:
    name: str
    weight_sparsity: float
    rel_error: float | None
    seconds: float


@dataclass
class PruneResult:
    config: PruneConfig
    thresholds: dict[str, float]
    linears: list[LinearReport] = field(default_factory=list)
    calib_act_sparsity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resources: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "config": asdict(self.config),
            "thresholds": self.thresholds,
            "calib_act_sparsity": self.calib_act_sparsity,
            "linears": [asdict(r) for r in self.linears],
            "prune_seconds": self.seconds,
            "resources": self.resources,
        }


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


def _run(layer: nn.Module, hidden: list[torch.Tensor], kwargs: list[dict]) -> list[torch.Tensor]:
    return [layer(h, **kw) for h, kw in zip(hidden, kwargs, strict=True)]


def _group_inputs(block: Block, group: str, hidden: list[torch.Tensor], kwargs: list[dict]) -> list[torch.Tensor]:
    """Inputs of ``group`` (before its sparsifier) per chunk, as (tokens, k) matrices."""
    first = next(iter(block.groups[group].values()))
    seen: list[torch.Tensor] = []

    def hook(_mod, args):
        seen.append(args[0].reshape(-1, args[0].shape[-1]).float())
        raise _Stop

    handle = first.register_forward_pre_hook(hook, prepend=True)
    try:
        for h, kw in zip(hidden, kwargs, strict=True):
            try:
                block.module(h, **kw)
            except _Stop:
                pass
    finally:
        handle.remove()
    return seen


def _all_group_inputs(block: Block, hidden, kwargs):
    """Run the (unpruned) block fully.

    Returns its outputs, every group's inputs (per chunk) and, per linear, the squared
    norm of its output over all chunks (the scale of the dense target).
    """
    seen: dict[str, list[torch.Tensor]] = {g: [] for g in GROUPS}
    out_norm2: dict[str, float] = {}
    handles = []
    for group, linears in block.groups.items():
        first = next(iter(linears.values()))
        handles.append(
            first.register_forward_pre_hook(
                lambda _m, args, g=group: seen[g].append(args[0].reshape(-1, args[0].shape[-1]).float())
            )
        )
        for lname, linear in linears.items():

            def norm_hook(mod, _args, out, key=lname):
                out = out if mod.bias is None else out - mod.bias
                out_norm2[key] = out_norm2.get(key, 0.0) + float(out.double().pow(2).sum())

            handles.append(linear.register_forward_hook(norm_hook))
    try:
        out = _run(block.module, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    seen["_out_norm2"] = out_norm2
    return out, seen


def _gram(xs: list[torch.Tensor], ys: list[torch.Tensor] | None = None) -> torch.Tensor:
    """sum over chunks of X^T Y (tokens-major chunks), accumulated in float64."""
    ys = xs if ys is None else ys
    total = None
    for x, y in zip(xs, ys, strict=True):
        part = (x.T @ y).double()
        total = part if total is None else total + part
    return total


def _rel_error(W, What, H, cross=None, target_norm2=None) -> float:
    """Relative output error from statistics (no pass over the data).

    One stream: ||(What - W) X||^2 / ||W X||^2 with H = X X^T.
    Two streams: ||What Xs - W Xd||^2 / ||W Xd||^2 with H = Xs Xs^T, cross = Xs Xd^T.
    """
    W, What = W.double(), What.double()
    if cross is None:
        D = What - W
        return float(((D @ H) * D).sum() / ((W @ H) * W).sum().clamp_min(1e-30))
    err = ((What @ H) * What).sum() - 2 * ((What @ cross) * W).sum() + target_norm2
    return float(err.clamp_min(0) / max(target_norm2, 1e-30))


def stream_names(cfg: PruneConfig) -> list[str]:
    if cfg.method == "duogpt":
        return ["dense", "comp"]
    if cfg.method == "magnitude":
        return ["comp"] if cfg.act_sparsity > 0 else []
    return ["calib", "comp"] if cfg.act_sparsity > 0 else ["comp"]


@torch.no_grad()
def prune_model(
    model: nn.Module,
    samples: torch.Tensor,
    cfg: PruneConfig,
    progress: bool = True,
    work_dir: str | Path | None = None,
) -> PruneResult:
    """Prune ``model`` in place to dual sparsity; returns thresholds and per-linear reports.

    With ``work_dir`` the state after every block is saved there, and a prune that finds a
    state from the same run continues after its last finished block (bit-identical result).
    """
    from duogpt.resume import WorkDir, fingerprint

    cfg.validate()
    start = time.perf_counter()
    pattern = solvers.parse_pattern(cfg.pattern)
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    work = None if work_dir is None else WorkDir(work_dir, fingerprint(model, samples, asdict(cfg)))
    chunks = list(samples.to(device).split(cfg.batch_size))
    hidden, kwargs = capture_inputs(model, chunks)
    names = stream_names(cfg)
    streams = {name: list(hidden) for name in names}
    result = PruneResult(cfg, thresholds={})
    sparsifiers = sparsify.install(model, {}, cfg.sparsify_prefill)
    first = 0
    saved = work.load() if work is not None else None
    if saved is not None:
        first = _restore(model, blocks, work, saved, streams, result, device)
        sparsifiers = sparsify.install(model, result.thresholds, cfg.sparsify_prefill)
        start -= saved["seconds"]
        log.info("resuming from block %d of %d (state in %s)", first, len(blocks), work.path)
    bar = tqdm(blocks, desc=f"{cfg.method} {cfg.weight_sparsity:.0%}/{cfg.act_sparsity:.0%}", disable=not progress)
    for block in bar:
        if block.index < first:
            continue
        kw = kwargs[block.index]
        dense_inputs = None
        if "dense" in streams:
            streams["dense"], dense_inputs = _all_group_inputs(block, streams["dense"], kw)
        for group in GROUPS:
            name = f"layers.{block.index}.{group}"
            xs = None
            if "comp" in streams:
                raw = _group_inputs(block, group, streams["comp"], kw)
                tau = sparsify.calibrate_threshold(raw, cfg.act_sparsity, cfg.seed)
                result.thresholds[name] = tau
                sparsify.install(model, {name: tau}, cfg.sparsify_prefill)
                xs = [sparsify.sparsify(x, tau) for x in raw]
                del raw
                zeros = sum(int((x == 0).sum()) for x in xs)
                result.calib_act_sparsity[name] = zeros / sum(x.numel() for x in xs)
            stats_inputs = xs
            if "calib" in streams:
                with sparsify.disabled(model):
                    stats_inputs = _group_inputs(block, group, streams["calib"], kw)
            _solve_group(block, group, cfg, pattern, stats_inputs, dense_inputs, result)
            del xs, stats_inputs
        dense_inputs = None
        if "comp" in streams:
            streams["comp"] = _run(block.module, streams["comp"], kw)
        if "calib" in streams:
            with sparsify.disabled(model):
                streams["calib"] = _run(block.module, streams["calib"], kw)
        for sp in sparsifiers.values():
            sp.forget()
        if work is not None:
            work.save(block.index, _block_weights(block), _state(streams, result, time.perf_counter() - start))
    sparsify.reset_counters(model)
    result.seconds = time.perf_counter() - start
    return result


def _block_weights(block: Block) -> dict[str, torch.Tensor]:
    return {name: linear.weight.data for name, linear in block.linears().items()}


def _state(streams: dict, result: PruneResult, seconds: float) -> dict:
    return {
        "streams": {name: [h.cpu() for h in hs] for name, hs in streams.items()},
        "thresholds": dict(result.thresholds),
        "calib_act_sparsity": dict(result.calib_act_sparsity),
        "linears": [asdict(r) for r in result.linears],
        "seconds": seconds,
        "rng": torch.get_rng_state(),
    }


def _restore(model, blocks, work, saved: dict, streams: dict, result: PruneResult, device) -> int:
    """Put a saved state back: finished blocks' weights, streams, thresholds, reports. Returns the next block."""
    first = int(saved["next_block"])
    for block in blocks[:first]:
        weights = work.block_weights(block.index)
        for name, linear in block.linears().items():
            if name not in weights or weights[name].shape != linear.weight.shape:
                raise UsageError(f"resumable state in {work.path} does not fit the model: delete it to start over")
            linear.weight.data = weights[name].to(device=device, dtype=linear.weight.dtype)
    for name in streams:
        streams[name] = [h.to(device) for h in saved["streams"][name]]
    result.thresholds.update(saved["thresholds"])
    result.calib_act_sparsity.update(saved["calib_act_sparsity"])
    result.linears.extend(LinearReport(**r) for r in saved["linears"])
    torch.set_rng_state(saved["rng"])
    return first


def _solve_group(block, group, cfg, pattern, inputs, dense_inputs, result) -> None:
    """Solve every linear of one group from its calibration inputs."""
    H = _gram(inputs) if cfg.method in ("duogpt", "sparsegpt") else None
    G = cross = None
    if cfg.method == "duogpt":
        xd = dense_inputs[group]
        cross = _gram(inputs, xd)  # Xs Xd^T
        G = cross.T - H  # (Xd - Xs) Xs^T
    norms2 = sum((x.double() ** 2).sum(0) for x in inputs) if cfg.method == "wanda" else None
    # ablation: H from the dense inputs, min ||(W - What) Xd||, blind to the sparsified inputs
    Hd = _gram(dense_inputs[group]) if cfg.method == "duogpt" and cfg.hessian == "dense" else None
    parent = GROUPS[group][0]
    for lname, linear in block.groups[group].items():
        t0 = time.perf_counter()
        W = linear.weight.data
        full = f"layers.{block.index}.{parent}.{lname}"
        if not torch.isfinite(W).all():
            raise UsageError(f"{full}: the weights contain NaN/Inf: the model file is damaged or overflowed")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", solvers.DampeningWarning)
            try:
                new = _solve_linear(cfg, pattern, W, H, G, Hd, norms2)
            except solvers.IllConditioned as err:
                raise UsageError(
                    f"{full}: {err}: check the model's weights, or give more calibration tokens (--nsamples)"
                ) from None
        for w in caught:
            log.warning("%s: %s", full, w.message)
        _check_finite(new, block.index, parent, lname)
        err = None
        if H is not None and cfg.method == "sparsegpt":
            err = _rel_error(W, new, H)
        elif cfg.method == "duogpt":
            err = _rel_error(W, new, H, cross, dense_inputs["_out_norm2"][lname])
        linear.weight.data = new.to(W.dtype)
        sparsity = float((linear.weight.data == 0).float().mean())
        result.linears.append(LinearReport(full, sparsity, err, time.perf_counter() - t0))
        log.info("%-28s sparsity %.3f  rel. error %s", full, sparsity, "n/a" if err is None else f"{err:.4f}")


def _solve_linear(cfg, pattern, W, H, G, Hd, norms2) -> torch.Tensor:
    """One linear's pruned weights under the method's statistics."""
    p = cfg.weight_sparsity
    if cfg.method == "magnitude":
        return solvers.magnitude(W.float(), p, pattern)
    if cfg.method == "wanda":
        if not torch.isfinite(norms2).all():
            raise solvers.IllConditioned("the input norms have NaN/Inf entries (the inputs overflowed)")
        return solvers.wanda(W.float(), norms2, p, pattern)
    if cfg.method == "sparsegpt":
        return solvers.sparsegpt(W, H, p, pattern, cfg.blocksize, cfg.percdamp)
    if Hd is not None:
        return solvers.sparsegpt(W, Hd, p, pattern, cfg.blocksize, cfg.percdamp)
    if not torch.isfinite(G).all():
        raise solvers.IllConditioned("the correction statistics G have NaN/Inf entries (the inputs overflowed)")
    return solvers.duogpt(W, H, G, p, pattern, cfg.alpha, cfg.ridge, cfg.correction, cfg.blocksize, cfg.percdamp)


def _check_finite(W: torch.Tensor, index: int, parent: str, lname: str) -> None:
    if not torch.isfinite(W).all():
        raise UsageError(
            f"layers.{index}.{parent}.{lname}: the solver produced NaN/Inf; raise --percdamp or check the model weights"
        )
