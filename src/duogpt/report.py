"""Tables: Markdown for people, CSV for tools; the ``duogpt report`` comparison of eval results."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from duogpt.errors import UsageError

COLUMNS = ["run", "method", "weight sparsity", "act. sparsity", "PPL", "PPL halves", "vs first", "tokens"]


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


def table_rows(results: list[dict]) -> list[list[str]]:
    base = results[0]["perplexity"]
    out = []
    for r in results:
        act = r.get("activation_sparsity")
        halves = r.get("half_perplexities") or [float("nan")] * 2
        out.append(
            [
                str(r["run"]),
                str(r.get("method") or "dense"),
                f"{r.get('weight_sparsity', 0.0):.3f}",
                "dense" if act is None else f"{act:.3f}",
                f"{r['perplexity']:.2f}",
                f"{halves[0]:.1f} / {halves[1]:.1f}",
                f"{r['perplexity'] / base:.3f}x",
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
