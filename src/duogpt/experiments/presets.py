"""Sweep presets: which cells a sweep runs, and how structured baselines are sized.

A preset crosses pruning methods with (p_w, p_x) settings and, for ablations, with
variants of one PruneConfig field. Structured baselines (layer removal, width pruning) are
sized so that the decode cost model (duogpt/costmodel.py) gives them the same estimated
speedup as the dual-sparse setting they are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from duogpt.errors import UsageError
from duogpt.runtime.costmodel import config_cost

STRUCTURED = ("shortgpt", "flap")


@dataclass
class Cell:
    """One run. ``method``: 'dense', 'activation-only', a pruning method or a structured baseline."""

    label: str
    method: str
    weight_sparsity: float = 0.0
    act_sparsity: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.method in ("dense", "activation-only"):
            return self.method
        return "structured" if self.method in STRUCTURED else "dual"


@dataclass
class Preset:
    name: str
    description: str
    settings: tuple[tuple[float, float], ...]
    methods: tuple[str, ...]
    activation_only: bool = True
    structured: tuple[str, ...] = ()
    variant_field: str | None = None  # a PruneConfig field the ablation varies, or "variant" (see below)
    variants: tuple = ()  # values of the field; with "variant", dicts of settings ("only": one method's)
    nsamples: int = 32
    seqlen: int = 512
    eval_windows: int = 32
    task_items: int = 64
    measure_speed: bool = True


_ABLATION = dict(activation_only=False, task_items=0, measure_speed=False)
PRESETS = {
    p.name: p
    for p in [
        Preset(
            "paper",
            "every method at 30/30, 40/40, 50/50; structured baselines at DuoGPT's estimated speedup",
            ((0.3, 0.3), (0.4, 0.4), (0.5, 0.5)),
            ("wanda", "sparsegpt", "duogpt"),
            structured=STRUCTURED,
        ),
        Preset(
            "quick",
            "every method, baseline and plot on a few tokens (a smoke test, not a result)",
            ((0.5, 0.5),),
            ("magnitude", "wanda", "sparsegpt", "duogpt"),
            structured=STRUCTURED,
            nsamples=4,
            seqlen=64,
            eval_windows=4,
            task_items=16,
        ),
        Preset(
            "allocation",
            "uniform vs searched per-layer sparsities at equal estimated decode speedups (about 1.6x, 2.0x, "
            "2.4x), and DuoGPT's --alpha auto",
            ((0.3, 0.3), (0.45, 0.45), (0.55, 0.55)),
            ("sparsegpt", "duogpt"),
            activation_only=False,
            variant_field="variant",
            variants=({"allocation": "uniform"}, {"allocation": "search"}, {"alpha": "auto", "only": "duogpt"}),
            task_items=0,
        ),
        Preset(
            "ablate-alpha",
            "DuoGPT's residual scale alpha (0 = sparse Hessian, no correction)",
            ((0.5, 0.5),),
            ("duogpt",),
            variant_field="alpha",
            variants=(0.0, 0.25, 0.5, 1.0),
            **_ABLATION,
        ),
        Preset(
            "ablate-correction",
            "corrected target vs GPTAQ-style sequential correction vs none",
            ((0.5, 0.5),),
            ("duogpt",),
            variant_field="correction",
            variants=("target", "sequential", "none"),
            **_ABLATION,
        ),
        Preset(
            "ablate-hessian",
            "Hessian from the sparse (compressed) inputs vs from the dense inputs",
            ((0.5, 0.5),),
            ("duogpt",),
            variant_field="hessian",
            variants=("sparse", "dense"),
            **_ABLATION,
        ),
        Preset(
            "ablate-tokens",
            "number of calibration sequences (of 512 tokens)",
            ((0.5, 0.5),),
            ("duogpt",),
            variant_field="nsamples",
            variants=(8, 16, 32, 64),
            nsamples=64,
            **_ABLATION,
        ),
        Preset(
            "ablate-nm",
            "N:M semi-structured vs unstructured weight sparsity at equal density (50%)",
            ((0.5, 0.5),),
            ("sparsegpt", "duogpt"),
            variant_field="pattern",
            variants=("unstructured", "4:8", "2:4"),
            **_ABLATION,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def tag(pw: float, px: float) -> str:
    return f"{round(pw * 100)}-{round(px * 100)}"


def plan_cells(preset: Preset, config, value_bytes: int) -> list[Cell]:
    """The preset's cells for a model with ``config`` (structured baselines sized for it)."""
    cells = [Cell("dense", "dense")]
    for pw, px in preset.settings:
        t = tag(pw, px)
        if preset.activation_only:
            cells.append(Cell(f"activation-only-{t}", "activation-only", 0.0, px))
        for method in preset.methods:
            if preset.variant_field is None:
                cells.append(Cell(f"{method}-{t}", method, pw, px))
                continue
            for value in preset.variants:
                if isinstance(value, dict):
                    if value.get("only", method) != method:
                        continue
                    settings = {k: v for k, v in value.items() if k != "only"}
                    name = ",".join(f"{k}={v}" for k, v in settings.items())
                    cells.append(Cell(f"{method}-{t}-{name}", method, pw, px, {**settings, "variant": name}))
                    continue
                label = f"{method}-{t}-{preset.variant_field}={value}".replace(":", "of")
                cells.append(Cell(label, method, pw, px, {preset.variant_field: value}))
        target = speedup(config, value_bytes, preset.seqlen, p_w=pw, p_x=px)
        for kind in preset.structured:
            plan = PLANNERS[kind](config, value_bytes, target, preset.seqlen)
            cells.append(Cell(f"{kind}-{t}", kind, settings={"matched_to": f"duogpt-{t}", **plan}))
    return cells


def speedup(config, value_bytes: int, context: int, **kwargs) -> float:
    """Estimated decode speedup over the dense model (cost model, from the config)."""
    dense = config_cost(config, value_bytes, context=context).total
    return dense / config_cost(config, value_bytes, context=context, **kwargs).total


def plan_shortgpt(config, value_bytes: int, target: float, context: int) -> dict:
    """How many blocks to remove for the estimated speedup closest to ``target``."""
    blocks = config.num_hidden_layers
    keep = min(range(1, blocks + 1), key=lambda b: abs(speedup(config, value_bytes, context, blocks_keep=b) - target))
    return {
        "remove_blocks": blocks - keep,
        "planned_speedup": speedup(config, value_bytes, context, blocks_keep=keep),
    }


def plan_flap(config, value_bytes: int, target: float, context: int) -> dict:
    """MLP-channel and KV-group fractions for ``target``, the two fractions as close as the groups allow."""
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    best = None
    for removed in range(kv):
        kv_keep = 1 - removed / kv
        lo, hi = 0.0, 1.0  # bisect the MLP fraction kept
        for _ in range(40):
            mid = (lo + hi) / 2
            if speedup(config, value_bytes, context, mlp_keep=mid, kv_keep=kv_keep) > target:
                lo = mid
            else:
                hi = mid
        mlp_keep = (lo + hi) / 2
        reached = speedup(config, value_bytes, context, mlp_keep=mlp_keep, kv_keep=kv_keep)
        if mlp_keep < 0.02 or abs(reached - target) > 0.01 * target:
            continue  # this many groups overshoots, or the MLP cannot make up the rest
        score = abs((1 - mlp_keep) - removed / kv)
        if best is None or score < best[0]:
            best = (
                score,
                {"mlp_fraction": 1 - mlp_keep, "kv_group_fraction": removed / kv, "planned_speedup": reached},
            )
    if best is None:
        raise UsageError(f"width pruning cannot reach an estimated {target:.2f}x on this model: lower the sparsity")
    return best[1]


PLANNERS = {"shortgpt": plan_shortgpt, "flap": plan_flap}
