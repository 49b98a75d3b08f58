"""Tables: Markdown for people, CSV for tools; the ``duogpt report`` comparison of eval results."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from duogpt.errors import UsageError

COLUMNS = [
    "run", "method", "weight sparsity", "act. sparsity", "PPL", "PPL halves", "vs first", "PPL cross-domain",
    "cross vs first", "est. speedup", "tokens",
]  # fmt: skip


def load_results(paths: list[str]) -> list[dict]:
    """Read eval JSON files; each row is labelled by its file name."""
    rows = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UsageError(f"{path!r} does not exist: pass JSON files written by duogpt eval --json") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{path!r} is not valid JSON: pass files written by duogpt eval --json") from None
        if not isinstance(result, dict) or "perplexity" not in result:
            raise UsageError(f"{path!r} has no 'perplexity': pass files written by duogpt eval --json")
        rows.append({"run": result.get("label") or Path(path).stem, **result})
    return rows


def _cross(result: dict) -> float | None:
    return (result.get("cross_domain") or {}).get("perplexity")


def table_rows(results: list[dict]) -> list[list[str]]:
    """One row per eval result; ratios against the first (cross-domain: the first that has one)."""
    base = results[0]["perplexity"]
    cross_base = next((_cross(r) for r in results if _cross(r) is not None), None)
    out = []
    for r in results:
        act = r.get("activation_sparsity")
        halves = r.get("half_perplexities") or [float("nan")] * 2
        cross, speedup = _cross(r), r.get("estimated_decode_speedup")
        out.append(
            [
                str(r["run"]),
                str(r.get("method") or "dense"),
                f"{r.get('weight_sparsity', 0.0):.3f}",
                "dense" if act is None else f"{act:.3f}",
                f"{r['perplexity']:.2f}",
                f"{halves[0]:.1f} / {halves[1]:.1f}",
                f"{r['perplexity'] / base:.3f}x",
                "-" if cross is None else f"{cross:.2f} ({r['cross_domain'].get('text', '?')})",
                "-" if cross is None else f"{cross / cross_base:.3f}x",
                "-" if speedup is None else f"{speedup:.2f}x",
                str(r.get("tokens", "")),
            ]
        )
    return out


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
