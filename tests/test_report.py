"""duogpt report: eval results side by side, with the cross-domain figure and the estimated speedup."""

from __future__ import annotations

import json

import pytest

from duogpt.cli import main
from duogpt.errors import UsageError
from duogpt.report import COLUMNS, load_results, table_rows


def _result(ppl, cross=None, speedup=None, **extra):
    r = {"perplexity": ppl, "method": "duogpt", "weight_sparsity": 0.5, "activation_sparsity": 0.5, "tokens": 64}
    if cross is not None:
        r["cross_domain"] = {"perplexity": cross, "text": "pydocs"}
    if speedup is not None:
        r["estimated_decode_speedup"] = speedup
    return r | extra


def test_rows_show_cross_domain_ratios_against_the_first_that_has_one():
    rows = table_rows(
        [
            {"run": "dense", **_result(40.0, method=None, activation_sparsity=None)},
            {"run": "uniform", **_result(80.0, cross=50.0, speedup=2.22)},
            {"run": "search", **_result(72.0, cross=45.0, speedup=2.22)},
        ]
    )
    col = {name: i for i, name in enumerate(COLUMNS)}
    assert [r[col["vs first"]] for r in rows] == ["1.000x", "2.000x", "1.800x"]
    assert [r[col["PPL cross-domain"]] for r in rows] == ["-", "50.00 (pydocs)", "45.00 (pydocs)"]
    assert [r[col["cross vs first"]] for r in rows] == ["-", "1.000x", "0.900x"]
    assert [r[col["est. speedup"]] for r in rows] == ["-", "2.22x", "2.22x"]
    assert rows[0][col["method"]] == "dense" and rows[0][col["act. sparsity"]] == "dense"


def test_cli_writes_markdown_and_csv_and_refuses_a_file_without_perplexity(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result(80.0, cross=50.0, speedup=2.2)))
    b.write_text(json.dumps(_result(72.0, cross=45.0, speedup=2.2)))
    assert main(["report", str(a), str(b), "--markdown", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv")]) == 0
    assert "| b | duogpt |" in capsys.readouterr().out
    assert (tmp_path / "t.csv").read_text().splitlines()[0].split(",") == COLUMNS
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(UsageError, match="has no 'perplexity'"):
        load_results([str(bad)])
