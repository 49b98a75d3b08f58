"""Text sources: the packaged Brown split, local files, hub sources (faked), sampling."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from duogpt import corpus
from duogpt.errors import UsageError


def test_brown_parts_are_disjoint_and_tag_free():
    calib = corpus.load_text("brown", "calib")
    evaluation = corpus.load_text("brown", "eval")
    calib_docs = set(calib.split("\n\n"))
    eval_docs = evaluation.split("\n\n")
    assert len(calib_docs) == 407 and len(eval_docs) == 93
    assert not calib_docs & set(eval_docs)
    assert "/at " not in evaluation[:10000] and "``" not in evaluation
    assert evaluation.startswith("East Providence should organize")


def test_pydocs_parts_are_disjoint_technical_text_with_its_license():
    calib = corpus.load_text("pydocs", "calib")
    evaluation = corpus.load_text("pydocs", "eval")
    assert len(evaluation) > 300_000 and len(calib) > 3 * len(evaluation)
    shared = {p.strip() for p in evaluation.split("\n\n")} & {p.strip() for p in calib.split("\n\n")}
    assert not {p for p in shared if len(p) > 20}  # paragraphs copied between modules were dropped
    for word in ("function", "argument", "module", "return"):
        assert evaluation.count(word) > 100
    brown = corpus.load_text("brown", "eval")
    assert brown.count("def ") * 20 < evaluation.count("def ")  # another domain: code and its documentation
    from importlib import resources

    notice = resources.files("duogpt").joinpath("data/pydocs_LICENSE.txt").read_text()
    assert "PYTHON SOFTWARE FOUNDATION LICENSE" in notice


def test_local_txt_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world")
    assert corpus.load_text(str(txt), "calib") == "hello world"
    jl = tmp_path / "a.jsonl"
    jl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "id": 3}) + "\n")
    assert corpus.load_text(str(jl), "eval") == "one\n\ntwo"


@pytest.mark.parametrize(
    "content, message",
    [("not json\n", "not valid JSON"), ('{"body": "x"}\n', "no string field 'text'"), ("[1, 2]\n", "no string field")],
)
def test_bad_jsonl_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        corpus.load_text(str(path), "calib")


def test_missing_binary_and_wrong_suffix_files(tmp_path):
    with pytest.raises(UsageError, match="neither a file nor"):
        corpus.load_text(str(tmp_path / "nope.txt"), "calib")
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00\x80" * 10)
    with pytest.raises(UsageError, match="not UTF-8"):
        corpus.load_text(str(binary), "calib")
    other = tmp_path / "c.csv"
    other.write_text("a,b")
    with pytest.raises(UsageError, match=r"\.txt or \.jsonl"):
        corpus.load_text(str(other), "calib")


def fake_datasets(monkeypatch, rows, calls):
    """A stand-in for the `datasets` package that serves local rows and records the call."""

    class Rows(dict):
        def select(self, idx):
            return Rows(text=[self["text"][i] for i in idx])

        def __len__(self):
            return len(self["text"])

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return Rows(text=list(rows))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_wikitext2_and_c4_go_through_datasets(monkeypatch):
    calls = []
    fake_datasets(monkeypatch, ["alpha", "beta"], calls)
    assert corpus.load_text("wikitext2", "eval") == "alpha\n\nbeta"
    assert calls[-1] == (("wikitext", "wikitext-2-raw-v1"), {"split": "test"})
    assert corpus.load_text("c4", "calib") == "alpha\n\nbeta"
    assert calls[-1][1]["split"] == "train" and "c4-train" in calls[-1][1]["data_files"]["train"]


def test_hub_failure_gives_clear_error(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(UsageError, match="could not fetch 'wikitext2'.*local .txt"):
        corpus.load_text("wikitext2", "calib")


def test_calibration_samples_are_seeded_windows():
    tokens = torch.arange(1000)
    a = corpus.calibration_samples(tokens, 5, 50, seed=3)
    b = corpus.calibration_samples(tokens, 5, 50, seed=3)
    assert a.shape == (5, 50) and torch.equal(a, b)
    assert ((a[:, 1:] - a[:, :-1]) == 1).all()  # contiguous windows
    assert not torch.equal(a, corpus.calibration_samples(tokens, 5, 50, seed=4))


def test_held_out_windows_overlap_no_calibration_window_and_are_seeded():
    tokens = torch.arange(2000)  # each window's ids are its positions
    fit = corpus.calibration_samples(tokens, 8, 50, seed=3, bos=7)
    held = corpus.held_out_samples(tokens, 4, 8, 50, seed=3, bos=7)
    assert held.shape == (4, 50) and (held[:, 0] == 7).all()
    taken, mine = [int(w[1]) for w in fit], [int(w[1]) for w in held]  # each window's first text position
    assert all(abs(a - b) >= 49 for i, a in enumerate(mine) for b in taken + mine[i + 1 :])
    assert torch.equal(held, corpus.held_out_samples(tokens, 4, 8, 50, seed=3, bos=7))
    with pytest.raises(UsageError, match=r"too short to hold out 4 windows .* \(--alpha auto\)"):
        corpus.held_out_samples(torch.arange(150), 4, 4, 50, seed=0)  # room for 3 disjoint windows at most


def test_too_short_text_is_refused():
    with pytest.raises(UsageError, match="fewer than one sample"):
        corpus.calibration_samples(torch.arange(10), 2, 50, 0)
    with pytest.raises(UsageError, match="fewer than one window"):
        corpus.eval_windows(torch.arange(10), 50)


def test_eval_windows_spread_and_disjoint():
    tokens = torch.arange(1000)
    w = corpus.eval_windows(tokens, 100, max_windows=4)
    assert w.shape == (4, 100)
    assert w[0, 0] == 0 and w[-1, -1] == 999
    assert len(set(w.reshape(-1).tolist())) == 400
