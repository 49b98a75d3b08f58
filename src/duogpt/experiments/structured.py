"""Structured-pruning baselines that make real, smaller ``transformers`` models.

- Block removal (ShortGPT): drop the decoder blocks whose output is most similar to
  their input (lowest Block Influence).
- Width pruning (FLAP): remove the same number of MLP channels and KV-head groups in
  every block, scored by input variance times squared weight-column norm, and fold the
  removed channels' mean contribution into an output bias.

The results keep the family's config format, so ``save_model`` writes checkpoints that
``AutoModelForCausalLM.from_pretrained`` loads as they are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from duogpt import checks
from duogpt.errors import UsageError
from duogpt.files import write_dir
from duogpt.models import find_blocks

PER_LAYER_CONFIG = ("layer_types", "no_rope_layers")  # config lists with one entry per block


def _calibrate(model: nn.Module, samples: torch.Tensor, batch_size: int, handles: list) -> None:
    """Run the calibration samples (token ids, shape (n, seqlen)) through ``model``, then remove the hooks."""
    try:
        if samples.dim() != 2 or samples.shape[0] == 0:
            raise UsageError(f"calibration samples have shape {tuple(samples.shape)}: pass token ids (n, seqlen)")
        device = next(model.parameters()).device
        with torch.no_grad():
            for start in range(0, samples.shape[0], batch_size):
                model(samples[start : start + batch_size].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def block_influence(model: nn.Module, samples: torch.Tensor, batch_size: int = 4) -> list[float]:
    """ShortGPT Block Influence per block: 1 - mean token cosine(block input, block output).

    Inputs and outputs are taken by hooks on the blocks, not from ``output_hidden_states``,
    whose last entry has the final norm applied.
    """
    _, blocks = find_blocks(model)
    index = {id(b.module): b.index for b in blocks}
    sums, counts = [0.0] * len(blocks), [0] * len(blocks)

    def hook(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, tuple) else output
        cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
        sums[index[id(module)]] += float(cos.double().sum())
        counts[index[id(module)]] += cos.numel()

    _calibrate(model, samples, batch_size, [b.module.register_forward_hook(hook, with_kwargs=True) for b in blocks])
    return [1.0 - s / c for s, c in zip(sums, counts, strict=True)]


def remove_blocks(model: nn.Module, n_remove: int, samples: torch.Tensor, batch_size: int = 4) -> list[int]:
    """Delete the ``n_remove`` blocks of lowest Block Influence in place; return their indices."""
    layers, blocks = find_blocks(model)
    if not 0 <= n_remove < len(blocks):
        raise UsageError(f"cannot remove {n_remove} of {len(blocks)} blocks: pass 0 to {len(blocks) - 1}")
    if n_remove == 0:
        return []
    scores = block_influence(model, samples, batch_size)
    removed = sorted(sorted(range(len(scores)), key=lambda i: scores[i])[:n_remove])
    for i in reversed(removed):
        del layers[i]  # ModuleList renumbers, so state-dict keys stay contiguous
    for new_idx, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx  # the KV cache is indexed by it
    config = model.config.get_text_config(decoder=True)
    for name in PER_LAYER_CONFIG:
        values = getattr(config, name, None)
        if isinstance(values, list | tuple) and len(values) == len(blocks):
            setattr(config, name, [v for i, v in enumerate(values) if i not in removed])
    config.num_hidden_layers = len(layers)
    return removed


class _Moments:
    """Forward pre-hook: per-channel mean and variance of a linear's input (float64 sums)."""

    def __init__(self) -> None:
        self.s: torch.Tensor | float = 0.0
        self.s2: torch.Tensor | float = 0.0
        self.n = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        self.s, self.s2, self.n = self.s + x.sum(0), self.s2 + (x * x).sum(0), self.n + x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.s / self.n

    def var(self) -> torch.Tensor:
        return (self.s2 / self.n - self.mean() ** 2).clamp_min(0)


def _kept_channels(size: int, fraction: float) -> int:
    """(1 - fraction) * size, rounded to a multiple of 8 (at least 8) where the size allows."""
    if fraction == 0:
        return size
    keep = (1.0 - fraction) * size
    return min(size, max(8, round(keep / 8) * 8) if size >= 8 else max(1, round(keep)))


def _select(moments: _Moments, w_out: nn.Linear, unit: int, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FLAP: the ``n_keep`` best units of ``unit`` consecutive input channels of ``w_out``.

    Returns the kept units (sorted) and the removed channels' mean contribution W[:, R] @ mean(x_R).
    """
    w = w_out.weight.data.double()
    score = (moments.var() * w.pow(2).sum(0)).reshape(-1, unit).sum(1)
    kept = torch.sort(torch.topk(score, n_keep).indices).values
    removed = torch.ones_like(score, dtype=torch.bool)
    removed[kept] = False
    removed = removed.repeat_interleave(unit)
    return kept, w[:, removed] @ moments.mean()[removed]


def _channels(units: torch.Tensor, unit: int) -> torch.Tensor:
    return (units[:, None] * unit + torch.arange(unit, device=units.device)).reshape(-1)


def _shrink(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep only ``rows`` (outputs) and ``cols`` (inputs) of ``lin``."""
    w = lin.weight.data
    w = w if rows is None else w[rows.to(w.device)]
    w = w if cols is None else w[:, cols.to(w.device)]
    lin.weight = nn.Parameter(w.clone(), requires_grad=lin.weight.requires_grad)
    if lin.bias is not None and rows is not None:
        lin.bias = nn.Parameter(lin.bias.data[rows.to(w.device)].clone(), requires_grad=lin.bias.requires_grad)
    lin.out_features, lin.in_features = w.shape


def _add_bias(lin: nn.Linear, delta: torch.Tensor | None = None) -> None:
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
    if delta is not None:
        lin.bias.data += delta.to(lin.bias.dtype)


def _biased_linears(layer: nn.Module, config, flags: list[str]) -> set[str] | None:
    """Linears with a bias in a copy of ``layer`` built on the meta device with the config ``flags`` on.

    ``None`` when the block cannot be built from its config that way.
    """
    probe_config = copy.deepcopy(config)
    for flag in flags:
        setattr(probe_config, flag, True)
    try:
        with torch.device("meta"):
            probe = type(layer)(probe_config, layer_idx=0)
    except Exception:  # a family whose block constructor differs: no compensation
        return None
    return {name for name, m in probe.named_modules() if isinstance(m, nn.Linear) and m.bias is not None}


_OUT_PROJ = {"mlp": "down_proj", "self_attn": "o_proj"}
_BIAS_FLAG = {"mlp": "mlp_bias", "self_attn": "attention_bias"}


@dataclass(frozen=True)
class _Widths:
    keep_mlp: int
    keep_kv: int
    group: int  # query heads per KV group
    head_dim: int


def _compensation(config, layer: nn.Module, todo: dict, compensate: bool) -> tuple[dict, list[str], set[str]]:
    """Which parts get a bias compensation (their config must express an output bias).

    Sets the config's bias flags for those parts. Returns (compensated per part, notes,
    linears that the flags give a bias).
    """
    notes: list[str] = []
    compensated = dict.fromkeys(todo, False)
    for part in (p for p in todo if todo[p] and compensate):
        flags = [_BIAS_FLAG[part]] if hasattr(config, _BIAS_FLAG[part]) else []
        compensated[part] = f"{part}.{_OUT_PROJ[part]}" in (_biased_linears(layer, config, flags) or ())
        if compensated[part]:
            for flag in flags:
                setattr(config, flag, True)
        else:
            notes.append(f"{type(config).__name__} cannot express a {part}.{_OUT_PROJ[part]} bias: not compensated")
    biased = (_biased_linears(layer, config, []) or set()) if any(compensated.values()) else set()
    return compensated, notes, biased


def _shrink_block(b, w: _Widths, stats: dict, compensated: dict, biased: set[str]) -> None:
    """Remove one block's least important MLP channels and KV groups (FLAP), with bias compensation."""
    mlp, attn = b.module.mlp, b.module.self_attn
    if stats["mlp"] is not None:
        kept, delta = _select(stats["mlp"], mlp.down_proj, 1, w.keep_mlp)
        _shrink(mlp.gate_proj, rows=kept)
        _shrink(mlp.up_proj, rows=kept)
        _shrink(mlp.down_proj, cols=kept)
        if compensated["mlp"]:
            _add_bias(mlp.down_proj, delta)
    if stats["self_attn"] is not None:
        unit = w.group * w.head_dim
        kept, delta = _select(stats["self_attn"], attn.o_proj, unit, w.keep_kv)
        _shrink(attn.q_proj, rows=_channels(kept, unit))
        _shrink(attn.k_proj, rows=_channels(kept, w.head_dim))
        _shrink(attn.v_proj, rows=_channels(kept, w.head_dim))
        _shrink(attn.o_proj, cols=_channels(kept, unit))
        if compensated["self_attn"]:
            _add_bias(attn.o_proj, delta)
    for name, lin in b.linears().items():
        if name in biased and lin.bias is None:
            _add_bias(lin)  # the bias flag gives these linears a (zero) bias too
    # sizes some classes cache (LlamaAttention caches only num_key_value_groups, which is unchanged)
    cached = ((mlp, "intermediate_size", w.keep_mlp), (attn, "num_heads", w.keep_kv * w.group))
    for module, attr, value in (*cached, (attn, "num_key_value_heads", w.keep_kv)):
        if hasattr(module, attr):
            setattr(module, attr, value)


def prune_width(
    model: nn.Module,
    samples: torch.Tensor,
    mlp_fraction: float,
    kv_group_fraction: float = 0.0,
    compensate: bool = True,
    batch_size: int = 4,
) -> dict:
    """FLAP width pruning in place, removing as many MLP channels and KV groups from every block."""
    checks.fraction("mlp_fraction", mlp_fraction)
    checks.fraction("kv_group_fraction", kv_group_fraction)
    _, blocks = find_blocks(model)
    if blocks[0].fused:
        raise UsageError(
            f"width pruning needs separate q/k/v and gate/up linears and {type(model).__name__} fuses them "
            f"({', '.join(blocks[0].fused)}): use block removal (shortgpt) or a dual-sparse method"
        )
    config = model.config.get_text_config(decoder=True)
    params_before = _param_count(model)
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    attn0 = blocks[0].module.self_attn
    head_dim = getattr(attn0, "head_dim", None) or attn0.q_proj.out_features // n_heads
    group = n_heads // n_kv
    size = blocks[0].module.mlp.down_proj.in_features
    keep_mlp = _kept_channels(size, mlp_fraction)
    keep_kv = n_kv - min(round(kv_group_fraction * n_kv), n_kv - 1)
    for name, p in attn0.named_parameters() if keep_kv < n_kv else ():
        if name.split(".")[0] not in ("q_proj", "k_proj", "v_proj", "o_proj") and tuple(p.shape) != (head_dim,):
            raise UsageError(
                f"cannot remove KV groups of {type(model).__name__}: its attention parameter {name!r} depends "
                "on the number of heads; pass kv_group_fraction=0"
            )

    todo = {"mlp": keep_mlp < size, "self_attn": keep_kv < n_kv}
    stats = {(b.index, part): _Moments() for b in blocks for part in todo if todo[part]}
    handles = [
        getattr(getattr(blocks[i].module, part), _OUT_PROJ[part]).register_forward_pre_hook(hook)
        for (i, part), hook in stats.items()
    ]
    _calibrate(model, samples, batch_size, handles)

    compensated, notes, biased = _compensation(config, blocks[0].module, todo, compensate)
    shapes = _Widths(keep_mlp, keep_kv, group, head_dim)
    for b in blocks:
        _shrink_block(b, shapes, {part: stats.get((b.index, part)) for part in todo}, compensated, biased)
    config.intermediate_size = keep_mlp
    if todo["self_attn"]:
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = keep_kv * group, keep_kv, head_dim
    return {
        "intermediate_size": keep_mlp,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "removed_mlp_channels_per_block": size - keep_mlp,
        "removed_kv_groups_per_block": n_kv - keep_kv,
        "removed_heads_per_block": (n_kv - keep_kv) * group,
        "compensated_mlp": compensated["mlp"],
        "compensated_attention": compensated["self_attn"],
        "notes": notes,
        "params_before": params_before,
        "params_after": _param_count(model),
    }


def save_model(model: nn.Module, tokenizer, out_dir: str | Path, force: bool = False) -> Path:
    """``save_pretrained`` model and tokenizer into a temporary sibling, then rename into place."""
    out = Path(out_dir)
    if out.exists() and not force:
        raise UsageError(f"{str(out)!r} already exists: choose a new directory or pass --force (force=True)")

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_dir(out, fill)
