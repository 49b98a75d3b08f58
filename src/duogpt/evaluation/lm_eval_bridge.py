"""Bridge to EleutherAI's lm-evaluation-harness (optional ``lm-eval`` extra).

The in-memory model is wrapped as it is (``HFLM(pretrained=model)``), so lm-eval calls its
forward and the sparsifiers' pre-hooks stay active. Task names are lm-eval's; ``include_path``
adds a folder of task YAMLs. Note that ``datasets`` resolves a task's relative ``data_files``
against the working directory, not the YAML's folder.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from duogpt import checks
from duogpt.errors import UsageError

_INSTALL = "pip install 'duogpt[lm-eval]'"


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.evaluator import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UsageError(f"lm-eval tasks need the lm-eval package: {_INSTALL}") from None
    return lm_eval, simple_evaluate, HFLM, TaskManager


def _plain(value):
    """JSON-friendly scalars (numpy floats become floats; strings such as 'N/A' stay)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _metrics(raw: dict) -> dict:
    """lm-eval's ``{'acc,none': x, 'alias': ...}`` as ``{'acc': x}``: only 'metric,filter' keys are
    metrics; the default filter 'none' is dropped, other filters keep their suffix."""
    out = {}
    for key, value in raw.items():
        metric, comma, flt = key.partition(",")
        if comma:
            out[metric if flt == "none" else key] = _plain(value)
    return out


def run_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str],
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    num_fewshot: int | None = None,
) -> dict:
    """Evaluate ``model`` on lm-eval ``tasks``.

    Returns ``{"results": {task: {metric: value}}, "versions": {task: version},
    "n_samples": {task: count}, "lm_eval": package version}``. lm-eval seeds Python's, NumPy's
    and torch's global generators as it starts.
    """
    lm_eval, simple_evaluate, HFLM, TaskManager = _import_lm_eval()
    tasks = list(tasks)
    if not tasks:
        raise UsageError("no lm-eval task given: name at least one, e.g. hellaswag")
    if limit is not None:
        checks.positive_int("limit", limit)
    checks.positive_int("batch_size", batch_size)
    if include_path is not None and not Path(include_path).exists():
        raise UsageError(f"lm-eval include path {include_path!r} does not exist: pass a folder of task YAMLs")
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path else "; pass include_path for your own task YAMLs"
        raise UsageError(f"unknown lm-eval task(s) {', '.join(unknown)}: not among lm-eval's tasks{where}")
    # lm-eval may set a pad token on the tokenizer: give it a copy
    lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
    out = simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False
    )
    return {
        "results": {task: _metrics(raw) for task, raw in out["results"].items()},
        "versions": {task: _plain(v) for task, v in out.get("versions", {}).items()},
        "n_samples": {task: n.get("effective") for task, n in out.get("n-samples", {}).items()},
        "lm_eval": lm_eval.__version__,
    }
