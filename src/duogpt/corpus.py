"""Text sources and how they become calibration samples and evaluation windows.

Sources (``SOURCE`` on the command line):

- ``brown`` (default): the Brown corpus shipped in the package, split by document
  (every fifth document of each genre is evaluation text, the rest calibration;
  see ``scripts/build_brown.py``).
- ``pydocs``: the Python standard library's documentation (language reference topics and
  module docstrings; technical English about software, unlike Brown's 1961 prose), shipped
  for cross-domain evaluation, split the same way (every fifth document is evaluation text;
  see ``scripts/build_pydocs.py``; Python license in ``data/pydocs_LICENSE.txt``).
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
CROSS_SOURCE = "pydocs"  # the default cross-domain evaluation text
PACKAGED = (DEFAULT_SOURCE, CROSS_SOURCE)
SOURCES = "brown, pydocs, wikitext2, c4, or a .txt/.jsonl file"  # how help texts name the choices
BOS_MODES = ("auto", "always", "never")
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
    if source in PACKAGED:
        blob = resources.files("duogpt").joinpath(f"data/{source}_{split}.txt.xz").read_bytes()
        return lzma.decompress(blob).decode("utf-8")
    if source in _HUB_SPLITS:
        return _load_hub_text(source, _HUB_SPLITS[source][split])
    return _load_local_text(Path(source))


def _load_local_text(path: Path) -> str:
    if not path.is_file():
        raise UsageError(
            f"text source {str(path)!r} is neither a file nor one of brown, pydocs, wikitext2, c4: "
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


def bos_token(tokenizer, mode: str = "auto") -> int | None:
    """The token every calibration sample and evaluation window starts with, or None.

    ``auto``: the tokenizer's BOS id when the tokenizer itself adds it to a plain encode
    (``tokenizer("x").input_ids`` starts with it; Llama-3, Gemma), else None; ``always``: its
    BOS id (refused when it has none); ``never``: None, the SparseGPT/Wanda-paper protocol
    (one tokenised text cut into windows, no BOS per window).
    """
    checks.one_of("bos", mode, BOS_MODES)
    bos = getattr(tokenizer, "bos_token_id", None)
    if mode == "never":
        return None
    if mode == "always":
        if bos is None:
            raise UsageError("--bos always: this tokenizer has no BOS token; use --bos auto or never")
        return bos
    ids = tokenizer("x")["input_ids"]
    return bos if bos is not None and len(ids) > 0 and ids[0] == bos else None


def _with_bos(rows: list[torch.Tensor], bos: int | None) -> torch.Tensor:
    if bos is None:
        return torch.stack(rows)
    return torch.stack([torch.cat([torch.tensor([bos], dtype=torch.long), r]) for r in rows])


def _text_positions(seqlen: int, bos: int | None, what: str) -> int:
    """Text tokens per row: the BOS, when there is one, takes one of the ``seqlen`` positions."""
    body = seqlen - (bos is not None)
    if body < 1:
        raise UsageError(f"{what} of {seqlen} token leaves no room for text after the BOS: use a larger --seqlen")
    return body


def calibration_samples(
    tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int, bos: int | None = None
) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens (a BOS first when given), shape (nsamples, seqlen)."""
    starts, _, body = _calibration_starts(tokens, nsamples, seqlen, seed, bos)
    return _with_bos([tokens[s : s + body] for s in starts], bos)


def _calibration_starts(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int, bos: int | None):
    """The calibration windows' first text positions, the generator they were drawn from (to draw on)
    and the text tokens per window."""
    checks.positive_int("nsamples", nsamples)
    checks.positive_int("seqlen", seqlen)
    body = _text_positions(seqlen, bos, "a calibration sample")
    if tokens.numel() < body:
        raise UsageError(
            f"calibration text has {tokens.numel()} tokens, fewer than one sample of --seqlen {seqlen}: "
            "give more text or a smaller --seqlen"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - body + 1, (nsamples,), generator=generator)
    return starts.tolist(), generator, body


HELD_OUT_TRIES = 1000  # draws per held-out window before the text is called too short


def held_out_samples(
    tokens: torch.Tensor, count: int, nsamples: int, seqlen: int, seed: int, bos: int | None = None
) -> torch.Tensor:
    """``count`` more windows of the calibration text, none overlapping the ``nsamples`` windows that
    ``calibration_samples`` draws with the same arguments: the same generator, drawn on after them,
    each draw that overlaps a window already taken drawn again. Shape (count, seqlen)."""
    taken, generator, body = _calibration_starts(tokens, nsamples, seqlen, seed, bos)
    span = tokens.numel() - body + 1
    held: list[int] = []
    for _ in range(count):
        for _ in range(HELD_OUT_TRIES):
            start = int(torch.randint(0, span, (1,), generator=generator))
            if all(abs(start - t) >= body for t in taken + held):
                held.append(start)
                break
        else:
            raise UsageError(
                f"the calibration text is too short to hold out {count} windows of {seqlen} tokens besides the "
                f"{nsamples} calibration windows (--alpha auto): give more text, fewer --nsamples or a smaller --seqlen"
            )
    return _with_bos([tokens[s : s + body] for s in held], bos)


def eval_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None, bos: int | None = None):
    """Non-overlapping windows of ``seqlen`` tokens (a BOS first when given), evenly spread when capped.

    With a BOS each window holds ``seqlen - 1`` consecutive text tokens after it.
    """
    body = _text_positions(seqlen, bos, "an evaluation window")
    total = tokens.numel() // body
    if total < 1:
        raise UsageError(
            f"evaluation text has {tokens.numel()} tokens, fewer than one window of {seqlen}: "
            "give more text or a smaller --seqlen"
        )
    count = total if max_windows is None else min(total, max_windows)
    picks = torch.linspace(0, total - 1, count).round().long().unique()
    return _with_bos([tokens[i * body : (i + 1) * body] for i in picks.tolist()], bos)
