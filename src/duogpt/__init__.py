"""duogpt: dual-sparse (weights + activations) pruning of causal LMs, calibrated without training.

Layout: ``pruning`` (solvers, method table, block pipeline, sparsifiers, resume, pre-flight),
``runtime`` (storage format, kernels, sparse linear, generation, cost model, benchmarks),
``evaluation`` (perplexity, built-in tasks, lm-eval bridge), ``experiments`` (presets,
sweeps, structured baselines, plots), ``cli``; at the top the API, config, models, corpus,
checkpoints, files (atomic writes), checks (validation) and errors.
"""

from __future__ import annotations

__version__ = "0.1.0"

from duogpt.api import calibrate_activation_sparsity, load, prune  # noqa: E402
from duogpt.config import PruneConfig  # noqa: E402

__all__ = ["prune", "load", "calibrate_activation_sparsity", "PruneConfig", "__version__"]
