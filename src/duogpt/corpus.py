"""Text sources and how they become calibration samples and evaluation windows.

Sources (``SOURCE`` on the command line):

- ``brown`` (default): the Brown corpus shipped in the package, split by document
  (every fifth document of each genre is evaluation text, the rest calibration;
  see ``scripts/build_brown.py``).
- ``wikitext2`` and ``c4``: through the ``datasets`` package; needs a network.
- a path to a ``.txt`` file (used whole) or a ``.jsonl`` file (the ``text`` field of
  each line, documents joined by blank lines).
"""

from __future__ import annotations

import json
import lzma
from importlib import resources
from pathlib import Path

import torch

from duogpt import checks
from duogpt.errors import UsageError

DEFAULT_SOURCE = "brown"
SOURCES = "brown, wikitext2, c4, or a .txt/.jsonl file"  # how help texts name the choices
SPLITS = ("calib", "eval")
_HUB_SPLITS = {"wikitext2": {"calib": "train", "eval": "test"}, "c4": {"calib": "train", "eval": "validation"}}
_C4_FILES = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}


def load_text(source: str, split: str) -> str:
    """Return the raw text of ``source`` for ``split`` ('calib' or 'eval')."""
    if split not in SPLITS:
        raise UsageError(f"unknown text split {split!r}: use one of {', '.join(SPLITS)}")
    if source == DEFAULT_SOURCE:
        blob = resources.files("duogpt").joinpath(f"data/brown_{split}.txt.xz").read_bytes()
        return lzma.decompress(blob).decode("utf-8")
    if source in _HUB_SPLITS:
        return _load_hub_text(source, _HUB_SPLITS[source][split])
    return _load_local_text(Path(source))


def _load_local_text(path: Path) -> str:
    if not path.is_file():
        raise UsageError(
            f"text source {str(path)!r} is neither a file nor one of brown, wikitext2, c4: "
            "pass an existing .txt/.jsonl file or a built-in source name"
        )
    if path.suffix not in (".txt", ".jsonl"):
        raise UsageError(f"text file {str(path)!r} must end in .txt or .jsonl")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"text file {str(path)!r} is not UTF-8 ({err.reason}): convert it to UTF-8") from None
    if path.suffix == ".txt":
        return raw
    docs = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path}:{lineno} is not valid JSON: one JSON object per line is expected") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UsageError(f"{path}:{lineno} has no string field 'text': each line needs {{\"text\": ...}}")
        docs.append(record["text"])
    return "\n\n".join(docs)


def _load_hub_text(source: str, split: str) -> str:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"text source {source!r} needs the datasets package: pip install datasets") from None
    try:
        if source == "wikitext2":
            rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            return "\n\n".join(rows["text"])
        rows = datasets.load_dataset("allenai/c4", data_files={split: _C4_FILES[split]}, split=split)
        return "\n\n".join(rows.select(range(min(len(rows), 20000)))["text"])
    except Exception as err:  # network or hub failures: say what to do instead
        raise UsageError(
            f"could not fetch {source!r} ({type(err).__name__}): check the network, or pass a local .txt/.jsonl file"
        ) from None


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as one long 1-D tensor (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_samples(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens, shape (nsamples, seqlen)."""
    checks.positive_int("nsamples", nsamples)
    checks.positive_int("seqlen", seqlen)
    if tokens.numel() < seqlen:
        raise UsageError(
            f"calibration text has {tokens.numel()} tokens, fewer than one sample of --seqlen {seqlen}: "
            "give more text or a smaller --seqlen"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen + 1, (nsamples,), generator=generator)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])


def eval_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seqlen`` tokens, evenly spread over the text when capped."""
    total = tokens.numel() // seqlen
    if total < 1:
        raise UsageError(
            f"evaluation text has {tokens.numel()} tokens, fewer than one window of {seqlen}: "
            "give more text or a smaller --seqlen"
        )
    count = total if max_windows is None else min(total, max_windows)
    picks = torch.linspace(0, total - 1, count).round().long().unique()
    return torch.stack([tokens[i * seqlen : (i + 1) * seqlen] for i in picks.tolist()])
