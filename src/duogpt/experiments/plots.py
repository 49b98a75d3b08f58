"""PNG plots of a sweep: perplexity against sparsity, and quality against decode speedup."""

from __future__ import annotations

from pathlib import Path

from duogpt.files import atomic_path


def _pyplot():
    """matplotlib, imported on first use, drawing to files only (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """Points (speedup, quality) not beaten on both axes by another point, by increasing speedup."""

    def better_or_equal(a: float, b: float) -> bool:
        return a >= b if higher_is_better else a <= b

    front = []
    for s, q in points:
        dominated = any(s2 >= s and better_or_equal(q2, q) and (s2, q2) != (s, q) for s2, q2 in points)
        if not dominated:
            front.append((s, q))
    return sorted(set(front))


def _save(fig, path: Path) -> None:
    try:
        with atomic_path(path, make_parents=True) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        _pyplot().close(fig)


def perplexity_vs_sparsity(results: list[dict], path: str | Path, title: str) -> None:
    """One line per method: perplexity against the target sparsity setting (log scale)."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    dense = [r["perplexity"] for r in results if r["method"] == "dense"]
    by_method: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r["kind"] in ("dual", "activation-only"):
            x = max(r["target_weight_sparsity"], r["target_act_sparsity"])
            by_method.setdefault(r["method"], []).append((x, r["perplexity"]))
    for method, pts in sorted(by_method.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    if dense:
        ax.axhline(dense[0], color="gray", linestyle="--", label="dense")
    ax.set_xlabel("target sparsity (weights / activations)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, Path(path))


def quality_vs_speedup(
    results: list[dict], path: str | Path, metric: str, label: str, higher_is_better: bool, title: str, series=None
) -> None:
    """Each cell at its estimated decode speedup, one colour per ``series(record)`` (default: the
    method); the Pareto front over all cells is drawn."""
    series = series or (lambda r: r["method"])
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    points = []
    for method in sorted({series(r) for r in results}):
        rows = [r for r in results if series(r) == method and r.get(metric) is not None]
        xs = [r["estimated_speedup"] for r in rows]
        ys = [r[metric] for r in rows]
        points += list(zip(xs, ys, strict=True))
        ax.scatter(xs, ys, label=method, s=30)
    front = pareto_front(points, higher_is_better)
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linewidth=1, label="Pareto front")
    ax.set_xlabel("estimated decode speedup over dense (bytes read per token)")
    ax.set_ylabel(label)
    if not higher_is_better:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, Path(path))
