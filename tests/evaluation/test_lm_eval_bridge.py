"""lm-evaluation-harness bridge: a local multiple-choice task scored through lm-eval and by hand."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import byte_tokenizer, tiny_model
from duogpt.errors import UsageError
from duogpt.evaluation import lm_eval_bridge as harness
from duogpt.pruning import sparsify

DATA = Path(__file__).parent / "data" / "lm_eval"
TASK = "duogpt_tiny_mc"


def test_missing_lm_eval_is_a_one_line_usage_error(monkeypatch):
    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(UsageError, match=r"pip install 'duogpt\[lm-eval\]'") as err:
        harness.run_lm_eval(tiny_model(), byte_tokenizer(), [TASK])
    assert "\n" not in str(err.value)


@pytest.fixture
def offline_task_dir(tmp_path, monkeypatch):
    """The fixture task, rewritten with an absolute data file and a private datasets cache; hub access off."""
    pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'duogpt[lm-eval]'")
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(datasets.config, name, True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    config = yaml.safe_load((DATA / "tiny_mc.yaml").read_text())
    config["dataset_kwargs"]["data_files"] = {"test": str(DATA / "tiny_mc.jsonl")}
    config["dataset_kwargs"]["cache_dir"] = str(tmp_path / "hf-datasets")
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "tiny_mc.yaml").write_text(yaml.safe_dump(config))
    return task_dir


@torch.no_grad()
def _by_hand(model, tokenizer) -> tuple[float, float]:
    """acc and acc_norm (log-likelihood per character of the choice) scored directly with ``model``."""
    acc = acc_norm = 0
    docs = [json.loads(line) for line in (DATA / "tiny_mc.jsonl").read_text().splitlines()]
    for doc in docs:
        lls = []
        for choice in doc["choices"]:
            ctx = tokenizer(doc["question"])["input_ids"]
            whole = tokenizer(doc["question"] + " " + choice)["input_ids"]
            logprobs = model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
            lls.append(sum(float(logprobs[t - 1, whole[t]]) for t in range(len(ctx), len(whole))))
        acc += max(range(len(lls)), key=lls.__getitem__) == doc["answer"]
        norm = [ll / len(c) for ll, c in zip(lls, doc["choices"], strict=True)]
        acc_norm += max(range(len(norm)), key=norm.__getitem__) == doc["answer"]
    return acc / len(docs), acc_norm / len(docs)


def test_local_task_matches_hand_scoring_with_sparsifiers_active(offline_task_dir):
    model, tokenizer = tiny_model(seed=3), byte_tokenizer()
    names = [f"layers.{i}.{g}" for i in range(2) for g in ("qkv", "o", "gate_up", "down")]
    sparsify.install(model, {n: 0.02 for n in names})
    out = harness.run_lm_eval(model, tokenizer, [TASK], include_path=str(offline_task_dir), batch_size=4)
    assert all(sp.calls > 0 for sp in sparsify.registry(model).values())  # lm-eval ran through the hooks
    metrics = out["results"][TASK]
    acc, acc_norm = _by_hand(model, tokenizer)
    assert 0 < acc < 1 and acc != acc_norm  # the comparison below can tell scorers apart
    with sparsify.disabled(model):
        assert _by_hand(model, tokenizer) != (acc, acc_norm)  # ... and a bypassed sparsifier
    assert metrics["acc"] == pytest.approx(acc) and metrics["acc_norm"] == pytest.approx(acc_norm)
    assert set(metrics) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert out["n_samples"][TASK] == 16 and out["versions"][TASK] == 1.0 and out["lm_eval"]
    assert tokenizer.pad_token is None  # the caller's tokenizer is left alone
    json.dumps(out)

    limited = harness.run_lm_eval(model, tokenizer, [TASK], include_path=str(offline_task_dir), limit=5)
    assert limited["n_samples"][TASK] == 5


def test_unknown_task_or_bad_arguments_are_usage_errors(offline_task_dir, tmp_path):
    model, tokenizer = tiny_model(), byte_tokenizer()
    with pytest.raises(UsageError, match="include path .* does not exist"):
        harness.run_lm_eval(model, tokenizer, [TASK], include_path=str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="limit must be a positive"):
        harness.run_lm_eval(model, tokenizer, [TASK], limit=0)
    with pytest.raises(UsageError, match="unknown lm-eval task"):
        harness.run_lm_eval(model, tokenizer, ["no_such_task_xyz"], include_path=str(offline_task_dir))


def test_cli_eval_runs_builtin_and_lm_eval_tasks(offline_task_dir, tiny_checkpoint, tmp_path, capsys):
    from duogpt.cli import main

    docs = [
        " ".join(f"Sentence {d} {s} tells of the {w} again." for s, w in enumerate("river stone garden window".split()))
        for d in range(12)
    ]
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(docs))
    out = tmp_path / "eval.json"
    args = ["eval", str(tiny_checkpoint), "--text", str(text), "--seqlen", "32", "--max-windows", "2", "--quiet"]
    args += ["--tasks", f"cloze,{TASK}", "--task-items", "4", "--include-path", str(offline_task_dir)]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cloze" in printed and TASK in printed
    report = json.loads(out.read_text())
    assert report["tasks"]["cloze"]["n"] == 4
    assert set(report["tasks"][TASK]) >= {"acc", "acc_norm"}
    assert main([*args[:-6], "--tasks", "no_such_task_anywhere", "--include-path", str(offline_task_dir)]) == 2
    assert "unknown lm-eval task(s) no_such_task_anywhere" in capsys.readouterr().err
