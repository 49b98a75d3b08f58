"""Settings of a prune: the one place that names them, documents them and checks them.

Every field of :class:`PruneConfig` carries its help text, its check (see ``duogpt.checks``)
and, where it has one, its choices; the ``duogpt prune`` flags are generated from these
fields (``weight_sparsity`` -> ``--weight-sparsity``, a boolean -> ``--name/--no-name``), and
``duogpt.prune`` takes a ``PruneConfig`` and/or keyword overrides of its fields. All
settings are recorded in ``duogpt.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from duogpt import checks
from duogpt.corpus import BOS_MODES, DEFAULT_SOURCE, SOURCES
from duogpt.errors import UsageError
from duogpt.models import DTYPE_CHOICES
from duogpt.pruning.allocation import ALLOCATIONS
from duogpt.pruning.methods import HESSIANS, METHODS, method_for
from duogpt.pruning.solvers import CORRECTIONS, parse_pattern


def setting(default, help: str, check, *, choices=(), metavar=None, negation_aliases=()):
    """A config field with what the command line and validation need to know about it.

    ``choices`` is kept as given (the method table itself, so a new entry is a new choice);
    ``negation_aliases`` (booleans) are further flags that set the field to False, e.g. the
    older ``--dense-prefill`` for ``sparsify_prefill``.
    """
    meta = dict(help=help, check=check, choices=choices, metavar=metavar, negation_aliases=negation_aliases)
    return field(default=default, metadata=meta)


def _alpha(name: str, value):
    """A non-negative number, or 'auto' (chosen per group on held-out calibration windows)."""
    if value == "auto":
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"alpha {value!r} is neither a number nor 'auto': pass e.g. 0.25, or auto") from None
    return checks.nonnegative(name, value)


def _pattern(name: str, value) -> str:
    parse_pattern(checks.text(name, value))
    return value


@dataclass
class PruneConfig:
    """Settings of one prune (all recorded in duogpt.json)."""

    method: str = setting("duogpt", "pruning method", checks.one_of, choices=METHODS)
    weight_sparsity: float = setting(0.5, "fraction of weights to prune", checks.fraction, metavar="P")
    act_sparsity: float = setting(0.5, "fraction of activations zeroed at run time", checks.fraction, metavar="P")
    target_speedup: float | None = setting(
        None,
        "estimated decode speedup to reach (the cost model's bytes per token, dense over pruned); sets the "
        "sparsities: equal weight and activation sparsity everywhere, or per layer with --allocation search",
        checks.speedup,
        metavar="S",
    )
    allocation: str = setting(
        "uniform",
        "uniform: the same sparsities in every layer; search: per block and group, the shape (per-group "
        "offsets, depth slopes) whose quick stand-in model has the least loss on a few calibration sequences, at "
        "the cost of --target-speedup (default: of the uniform --weight-sparsity/--act-sparsity)",
        checks.one_of,
        choices=ALLOCATIONS,
    )
    pattern: str = setting(
        "unstructured", "'unstructured' or N:M such as 2:4, 4:8 (N pruned of every M)", _pattern, metavar="N:M"
    )
    # alpha 0.25 / ridge 0.1: best of the ablation in docs/ablation-alpha.md at 30/30 and 50/50
    alpha: float | str = setting(
        0.25,
        "DuoGPT residual-correction scale, or auto: per group, the alpha in 0, 0.125, 0.25 with the least "
        "loss of held-out windows of the calibration text through the rest of the model (recorded in "
        "duogpt.json; about 6x the prune's time; needs every block in memory; see docs/method.md)",
        _alpha,
        metavar="A|auto",
    )
    ridge: float = setting(0.1, "DuoGPT target ridge, fraction of mean diag(H)", checks.nonnegative)
    correction: str = setting("target", "DuoGPT residual correction", checks.one_of, choices=CORRECTIONS)
    hessian: str = setting(
        "sparse",
        "DuoGPT Hessian from the sparse inputs, or the dense ones without correction (an ablation)",
        checks.one_of,
        choices=HESSIANS,
    )
    calib: str = setting(DEFAULT_SOURCE, f"calibration text: {SOURCES}", checks.text, metavar="SOURCE")
    bos: str = setting(
        "auto",
        "BOS first in every calibration sample: auto (when the tokenizer adds one), always, "
        "or never (the SparseGPT/Wanda-paper protocol)",
        checks.one_of,
        choices=BOS_MODES,
    )
    dtype: str = setting(
        "auto",
        "dtype of the pruned model: auto (the checkpoint's own), float32, bfloat16 or float16",
        checks.one_of,
        choices=DTYPE_CHOICES,
    )
    nsamples: int = setting(32, "calibration sequences", checks.positive_int, metavar="N")
    seqlen: int = setting(512, "tokens per calibration sequence", checks.positive_int, metavar="N")
    seed: int = setting(0, "seed for sample selection", checks.integer, metavar="N")
    batch_size: int = setting(8, "calibration sequences per forward pass", checks.positive_int, metavar="N")
    blocksize: int = setting(128, "OBS column block size", checks.positive_int, metavar="N")
    percdamp: float = setting(0.01, "OBS dampening, fraction of mean diag(H)", checks.nonnegative)
    sink_weight: float = setting(
        1.0,
        "weight of each calibration sequence's first token (the attention sink, which every later token "
        "attends to) in the statistics the solvers fit; 1 counts it as any other token (docs/method.md)",
        checks.nonnegative,
        metavar="W",
    )
    sparsify_prefill: bool = setting(
        True,
        "sparsify prompt (prefill) activations too; --no-sparsify-prefill sparsifies decode only",
        checks.flag,
        negation_aliases=("--dense-prefill",),
    )

    def validate(self) -> PruneConfig:
        """Check every field, then the combinations; returns self."""
        for f in fields():
            value = getattr(self, f.name)
            if f.metadata["choices"]:
                checks.one_of(f.name, value, f.metadata["choices"])
            else:
                f.metadata["check"](f.name, value)
        method_for(self.method, self.hessian)  # refuses an ablation the method does not have
        if self.targets_from_cost and self.pattern != "unstructured":
            raise UsageError(
                f"--target-speedup and --allocation {self.allocation} set unstructured sparsities: "
                f"drop --pattern {self.pattern}"
            )
        if self.alpha == "auto" and self.method == "duogpt":
            if self.correction != "target" or self.hessian != "sparse":
                raise UsageError("--alpha auto chooses the corrected target's scale: use it with --correction target")
        return self

    @property
    def chooses_alpha(self) -> bool:
        """Whether the prune chooses DuoGPT's alpha per group on held-out windows (``pruning/alpha_choice.py``)."""
        return self.alpha == "auto" and self.method == "duogpt"

    @property
    def targets_from_cost(self) -> bool:
        """Whether the sparsities come from the cost model (--target-speedup, or an allocation other than
        uniform) rather than from --weight-sparsity / --act-sparsity as given."""
        return self.allocation != "uniform" or self.target_speedup is not None

    def replace(self, **overrides) -> PruneConfig:
        """A copy with ``overrides`` (field names) applied and validated."""
        unknown = sorted(set(overrides) - {f.name for f in fields()})
        if unknown:
            raise UsageError(
                f"unknown setting(s) {', '.join(unknown)}: use fields of PruneConfig "
                f"({', '.join(f.name for f in fields())})"
            )
        return dataclasses.replace(self, **overrides).validate()


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(PruneConfig)
