"""`duogpt sweep`: the quick preset end to end on a tiny model, its files, and resuming."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from duogpt.cli import main
from duogpt.experiments import sweep
from duogpt.experiments.presets import PRESETS, Cell

WORDS = "river stone garden window market letter summer doctor engine island silver forest".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Several documents of distinct sentences, so the cloze task has distractors."""
    docs = []
    for d in range(12):
        sentences = [
            f"On day {d * 10 + s} the {WORDS[(d + s) % 12]} stood near the {WORDS[(3 * d + s) % 12]}." for s in range(8)
        ]
        docs.append(" ".join(sentences))
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(docs * 3))
    return path


def _run(tiny_checkpoint, corpus, out, *extra):
    args = ["sweep", "--preset", "quick", "--model", str(tiny_checkpoint), "--out", str(out)]
    args += ["--calib", str(corpus), "--text", str(corpus), "--nsamples", "2", "--seqlen", "32"]
    args += ["--eval-windows", "2", "--task-items", "4", "--quiet", *extra]
    return main(args)


def test_quick_preset_writes_every_table_and_plot_and_resumes(tiny_checkpoint, corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    assert _run(tiny_checkpoint, corpus, out) == 0
    data = json.loads((out / "results.json").read_text())
    labels = [r["label"] for r in data["results"]]
    methods = {r["method"] for r in data["results"]}
    assert methods == {"dense", "activation-only", *PRESETS["quick"].methods, "shortgpt", "flap"}
    assert len(labels) == len(set(labels))
    for r in data["results"]:
        assert r["perplexity"] > 1 and r["estimated_speedup"] > 0
        assert r["cross_perplexity"] > 1 and r["cross_perplexity"] != r["perplexity"]  # pydocs, by default
        assert set(r["tasks"]) == {"last_word", "cloze"}
        if r["kind"] != "dense":
            assert r["measured_speedup"] > 0
    by = {r["label"]: r for r in data["results"]}
    assert by["duogpt-50-50"]["estimated_speedup"] > 1.2
    # the structured baselines are sized to DuoGPT's estimate and saved as smaller real models
    for kind in ("shortgpt", "flap"):
        r = by[f"{kind}-50-50"]
        assert r["parameters"] < by["dense"]["parameters"]
        reloaded = AutoModelForCausalLM.from_pretrained(out / "models" / f"{kind}-50-50")
        assert sum(p.numel() for p in reloaded.parameters()) == r["parameters"]
    for name in ("results.csv", "results.md"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["quick-accuracy-vs-speedup.png", "quick-ppl-vs-sparsity.png", "quick-ppl-vs-speedup.png"]
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "DuoGPT perplexity" in md and "best structured baseline" in md and "cost model vs measurement" in md
    assert "PPL cross-domain" in md and "cross-domain: DuoGPT perplexity" in md
    assert "cross-domain: 2 x 32 tokens of the eval part of pydocs" in data["meta"]["data"]

    # a second run reuses every finished cell
    def refuse(*_a, **_k):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(sweep, "run_cell", refuse)
    assert _run(tiny_checkpoint, corpus, out) == 0
    assert json.loads((out / "results.json").read_text())["results"] == data["results"]


def test_stopped_sweep_resumes_from_the_unfinished_cell(tiny_checkpoint, corpus, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    real = sweep.run_cell
    calls = []

    def stop_at_third(cell, *args, **kwargs):
        calls.append(cell.label)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(sweep, "run_cell", stop_at_third)
    assert _run(tiny_checkpoint, corpus, out, "--no-speed", "--task-items", "0", "--cross-text", "none") == 130
    assert len(list((out / "cells").glob("*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(sweep, "run_cell", lambda cell, *a, **k: calls.append(cell.label) or real(cell, *a, **k))
    assert _run(tiny_checkpoint, corpus, out, "--no-speed", "--task-items", "0", "--cross-text", "none") == 0
    assert calls[0] not in ("dense", "activation-only-50-50")
    assert len(calls) == len(json.loads((out / "results.json").read_text())["results"]) - 2


def test_sweep_errors(capsys, tmp_path):
    assert main(["sweep", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["sweep", "--preset", "quick"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["sweep", "--list"]) == 0
    assert "ablate-alpha" in capsys.readouterr().out


def test_cells_from_other_data_are_run_again(tiny_checkpoint, corpus, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    assert _run(tiny_checkpoint, corpus, out, "--no-speed", "--task-items", "0") == 0
    cell = out / "cells" / "wanda-50-50.json"
    record = json.loads(cell.read_text())
    cell.write_text(json.dumps(dict(record, grid="from-another-sweep")))
    real, calls = sweep.run_cell, []
    monkeypatch.setattr(sweep, "run_cell", lambda c, *a, **k: calls.append(c.label) or real(c, *a, **k))
    assert _run(tiny_checkpoint, corpus, out, "--no-speed", "--task-items", "0") == 0
    assert calls == ["wanda-50-50"]
    assert json.loads(cell.read_text())["grid"] == record["grid"]
    calls.clear()
    assert _run(tiny_checkpoint, corpus, out, "--no-speed", "--task-items", "1") == 0  # other task settings
    assert len(calls) == len(json.loads((out / "results.json").read_text())["results"])


def test_preset_sections_split_a_results_document_by_preset():
    from duogpt.experiments.outputs import preset_sections

    doc = "# Results\n\nintro\n### Preset `paper`\n\ntable 1\n### Preset `ablate-alpha`\n\ntable 2\n"
    sections = preset_sections(doc)
    assert list(sections) == ["paper", "ablate-alpha"]
    assert sections["paper"] == "### Preset `paper`\n\ntable 1\n"
    assert sections["ablate-alpha"].endswith("table 2\n")
    assert preset_sections("# Results\n") == {}


def test_an_alpha_auto_cell_prunes_on_the_grids_held_out_windows():
    calls = []

    def held():
        calls.append("held")
        return torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))

    samples = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    grid = sweep.GridData(samples, samples[:1], "", "", None, held)
    auto = Cell("auto", "duogpt", 0.5, 0.5, {"alpha": "auto", "batch_size": 2, "blocksize": 16})
    thresholds, _ = sweep._prune(auto, tiny_model(), grid, progress=False)
    assert calls == ["held"] and len(thresholds) == 8
    sweep._prune(Cell("fixed", "duogpt", 0.5, 0.5, {"batch_size": 2}), tiny_model(), grid, progress=False)
    assert calls == ["held"]  # drawn only for a cell that chooses alpha
