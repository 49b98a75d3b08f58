"""Built-in offline zero-shot tasks over an evaluation text, scored with the model's sparsifiers active.

- ``last_word`` (LAMBADA-style): a context ending just before the final word of a sentence;
  correct iff greedy decoding (teacher-forced) produces every token of that word.
- ``cloze``: 2-3 consecutive sentences of a document, then a choice between the true next
  sentence and ``n_choices - 1`` sentences from other documents; the choice with the highest
  mean per-token log-likelihood wins (chance is ``1 / n_choices``).

Documents are separated by blank lines; sentences are the lines of a document, further split
after ``.``, ``!`` or ``?`` followed by a capital letter (common abbreviations and initials kept).
Items are drawn deterministically from ``seed``.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from duogpt import checks
from duogpt.corpus import bos_token
from duogpt.errors import UsageError
from duogpt.evaluation.perplexity import span_logits

TASKS = ("last_word", "cloze")
_Z95 = 1.959963984540054
_ABBREVIATIONS = frozenset(
    "mr mrs ms messrs dr st jr sr prof gen col gov sen rep lt capt sgt maj rev hon inc co corp ltd bros vs etc "
    "no nos mt ft ave fig vol jan feb mar apr aug sept sep oct nov dec".split()
)
_BOUNDARY = re.compile(r"""[.!?]+["')\]]*\s+(?=["'(\[]?[A-Z])""")
_FINAL_WORD = re.compile(r""" ([A-Za-z]{3,})[.!?]+["')\]]*$""")
_SENTENCE_END = re.compile(r"""[.!?]+["')\]]*$""")
_CHOICE_WORDS = (4, 40)


@dataclass
class TaskResult:
    name: str
    accuracy: float
    n: int
    ci_low: float
    ci_high: float
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LastWordItem:
    doc: int
    context: str
    target: str  # the final word with its leading space


@dataclass(frozen=True)
class ClozeItem:
    doc: int
    context: str
    choices: tuple[str, ...]  # each with its leading separator
    answer: int


class Score(NamedTuple):
    logprob: float  # summed over the continuation tokens
    tokens: int
    greedy: bool  # argmax reproduces every continuation token


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n < 1:
        raise ValueError("the Wilson interval needs n >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --- text segmentation ---------------------------------------------------------------------------


def documents(text: str) -> list[str]:
    """The blank-line separated documents of ``text``."""
    return [d.strip() for d in re.split(r"\n[ \t]*\n", text) if d.strip()]


def _is_abbreviation(head: str) -> bool:
    word = head.split()[-1].lstrip("\"'([") if head.split() else ""
    return len(word) <= 1 or "." in word or word.lower() in _ABBREVIATIONS


def sentence_spans(doc: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of one document, stripped of surrounding blanks."""
    spans = []
    for line in re.finditer(r"[^\n]+", doc):
        text, base, pos = line.group(), line.start(), 0
        pieces = []
        for m in _BOUNDARY.finditer(text):
            if not _is_abbreviation(text[pos : m.start()]):
                pieces.append((pos, m.start() + len(m.group().rstrip())))
                pos = m.end()
        pieces.append((pos, len(text)))
        for start, end in pieces:
            chunk = text[start:end]
            if chunk.strip():
                lead = len(chunk) - len(chunk.lstrip())
                spans.append((base + start + lead, base + start + len(chunk.rstrip())))
    return spans


def _segment(text: str) -> tuple[list[str], list[list[tuple[int, int]]]]:
    docs = documents(text)
    return docs, [sentence_spans(d) for d in docs]


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _too_few(task: str, found: int, wanted: int, what: str) -> UsageError:
    return UsageError(
        f"the evaluation text yields {found} {what} for {task}, fewer than the {wanted} requested: "
        "give a longer text or ask for fewer items"
    )


# --- item construction ---------------------------------------------------------------------------


def last_word_items(text: str, tokenizer, n: int, seed: int = 0, context_tokens: int = 256) -> list[LastWordItem]:
    """``n`` last-word items: the context starts at the earliest sentence start keeping it within
    ``context_tokens`` tokens (or, for one overlong sentence, is cut at encoding time)."""
    docs, spans = _segment(text)
    candidates = []
    for d, (doc, sents) in enumerate(zip(docs, spans, strict=True)):
        for j in range(1, len(sents)):  # at least one earlier sentence of context
            start, end = sents[j]
            m = _FINAL_WORD.search(doc, start, end)
            if m is not None and m.end() == end:
                candidates.append((d, j, m.start(1)))
    if len(candidates) < n:
        raise _too_few("last_word", len(candidates), n, "sentences ending in a word of 3+ letters")
    items = []
    for d, j, word_start in random.Random(seed).sample(candidates, n):
        doc, sents = docs[d], spans[d]
        begin = sents[j][0]
        for k in range(j - 1, -1, -1):
            if _n_tokens(tokenizer, doc[sents[k][0] : word_start - 1]) > context_tokens:
                break
            begin = sents[k][0]
        word = _FINAL_WORD.search(doc, sents[j][0], sents[j][1]).group(1)
        items.append(LastWordItem(doc=d, context=doc[begin : word_start - 1], target=" " + word))
    return items


def _is_choice(sentence: str) -> bool:
    return _CHOICE_WORDS[0] <= len(sentence.split()) <= _CHOICE_WORDS[1] and bool(_SENTENCE_END.search(sentence))


def cloze_items(text: str, n: int, seed: int = 0, n_choices: int = 4) -> list[ClozeItem]:
    """``n`` cloze items; the distractors are distinct sentences drawn from other documents."""
    docs, spans = _segment(text)
    pool: list[tuple[int, int]] = []  # eligible choice sentences, grouped by document
    ranges: dict[int, tuple[int, int]] = {}
    candidates = []
    for d, (doc, sents) in enumerate(zip(docs, spans, strict=True)):
        first = len(pool)
        for j, (start, end) in enumerate(sents):
            if _is_choice(doc[start:end]):
                pool.append((start, end))
                if j >= 3:
                    candidates.append((d, j))
        ranges[d] = (first, len(pool))
    pool_doc = [d for d, (lo, hi) in ranges.items() for _ in range(lo, hi)]
    if len(candidates) < n:
        raise _too_few("cloze", len(candidates), n, "sentences following 3 others")
    rng = random.Random(seed)
    items = []
    for d, j in rng.sample(candidates, n):
        doc, sents = docs[d], spans[d]
        m = rng.choice((2, 3))
        gap = doc[sents[j - 1][1] : sents[j][0]]
        sep = "\n" if "\n" in gap else " "
        true = doc[sents[j][0] : sents[j][1]]
        lo, hi = ranges[d]
        outside = len(pool) - (hi - lo)
        distractors: list[str] = []
        for r in rng.sample(range(outside), min(outside, n_choices + 15)):
            idx = r if r < lo else r + hi - lo
            start, end = pool[idx]
            sentence = docs[pool_doc[idx]][start:end]
            if sentence != true and sentence not in distractors:
                distractors.append(sentence)
                if len(distractors) == n_choices - 1:
                    break
        if len(distractors) < n_choices - 1:
            raise UsageError(
                f"cloze needs {n_choices - 1} distinct distractor sentences from other documents "
                f"(blank-line separated) but found {len(distractors)}: give a text with more documents "
                "or use fewer choices"
            )
        order = list(range(n_choices))
        rng.shuffle(order)
        choices = [true, *distractors]
        items.append(
            ClozeItem(
                doc=d,
                context=doc[sents[j - m][0] : sents[j - 1][1]],
                choices=tuple(sep + choices[i] for i in order),
                answer=order.index(0),
            )
        )
    return items


# --- scoring -------------------------------------------------------------------------------------


def encode_pair(
    tokenizer, context: str, continuation: str, max_context: int, bos: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation): the whole string is encoded and split, so the
    continuation tokenises as it would in running text; the context keeps its last ``max_context``
    tokens, after ``bos`` when given (``duogpt.corpus.bos_token``)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        cont = whole[len(ctx) :]
    else:
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return ([] if bos is None else [bos]) + ctx[-max_context:], cont


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) if config is not None else None


@torch.no_grad()
def score_continuations(
    model,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "score",
) -> list[Score]:
    """Score each continuation given its context with one right-padded forward per batch.

    Sequences are sorted by length to limit padding; a context is cut from the left when the
    pair would exceed the model's ``max_position_embeddings``.
    """
    device = next(model.parameters()).device
    limit = _max_positions(model)
    seqs = []
    for ctx, cont in pairs:
        if not ctx or not cont:
            raise ValueError("each pair needs a non-empty context and continuation")
        if limit is not None and len(ctx) + len(cont) > limit:
            ctx = ctx[max(0, len(ctx) + len(cont) - limit) :] or ctx[-1:]
        seqs.append((ctx, cont))
    order = sorted(range(len(seqs)), key=lambda i: -sum(map(len, seqs[i])))
    scores: list[Score | None] = [None] * len(seqs)
    for first in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
        batch = order[first : first + batch_size]
        width = max(sum(map(len, seqs[i])) for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            tokens = seqs[i][0] + seqs[i][1]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        spans = [(len(seqs[i][0]) - 1, sum(map(len, seqs[i])) - 1) for i in batch]
        for row, logits in enumerate(span_logits(model, ids.to(device), mask.to(device), spans)):
            i = batch[row]
            target = torch.tensor(seqs[i][1], device=logits.device)
            step = F.log_softmax(logits, dim=-1)
            scores[i] = Score(
                logprob=float(step.gather(1, target[:, None]).sum()),
                tokens=len(seqs[i][1]),
                greedy=bool((step.argmax(-1) == target).all()),
            )
    return scores  # type: ignore[return-value]


def _result(name: str, correct: Sequence[bool], start: float) -> TaskResult:
    n = len(correct)
    low, high = wilson_interval(sum(correct), n)
    return TaskResult(name, sum(correct) / n, n, low, high, time.perf_counter() - start)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        checks.positive_int(key, value)


# --- tasks ---------------------------------------------------------------------------------------


def last_word(
    model,
    tokenizer,
    text: str,
    n_items: int = 200,
    seed: int = 0,
    context_tokens: int = 256,
    batch_size: int = 8,
    progress: bool = True,
) -> TaskResult:
    """Accuracy of greedy last-word prediction (every target token must be the argmax)."""
    start = time.perf_counter()
    _check_positive(n_items=n_items, context_tokens=context_tokens, batch_size=batch_size)
    items = last_word_items(text, tokenizer, n_items, seed, context_tokens)
    bos = bos_token(tokenizer)
    pairs = [encode_pair(tokenizer, it.context, it.target, context_tokens, bos) for it in items]
    scores = score_continuations(model, pairs, batch_size, progress, desc="last_word")
    return _result("last_word", [s.greedy for s in scores], start)


def cloze(
    model,
    tokenizer,
    text: str,
    n_items: int = 200,
    seed: int = 0,
    n_choices: int = 4,
    context_tokens: int = 256,
    batch_size: int = 8,
    progress: bool = True,
) -> TaskResult:
    """Accuracy of picking the true next sentence by mean per-token log-likelihood."""
    start = time.perf_counter()
    _check_positive(n_items=n_items, context_tokens=context_tokens, batch_size=batch_size)
    if n_choices < 2:
        raise UsageError(f"cloze needs at least 2 choices, got {n_choices}")
    items = cloze_items(text, n_items, seed, n_choices)
    bos = bos_token(tokenizer)
    pairs = [encode_pair(tokenizer, it.context, c, context_tokens, bos) for it in items for c in it.choices]
    scores = score_continuations(model, pairs, batch_size, progress, desc="cloze")
    correct = []
    for k, item in enumerate(items):
        per_token = [s.logprob / s.tokens for s in scores[k * n_choices : (k + 1) * n_choices]]
        correct.append(max(range(n_choices), key=per_token.__getitem__) == item.answer)
    return _result("cloze", correct, start)


def run_builtin_tasks(
    model,
    tokenizer,
    text: str,
    names: Sequence[str] = TASKS,
    n_items: int = 200,
    seed: int = 0,
    progress: bool = True,
    *,
    context_tokens: int = 256,
    n_choices: int = 4,
    batch_size: int = 8,
) -> list[TaskResult]:
    """Run the named built-in tasks (``last_word``, ``cloze``) by calling ``model`` directly."""
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise UsageError(f"unknown task(s) {', '.join(map(repr, unknown)) or '(none given)'}: use {', '.join(TASKS)}")
    results = []
    for name in names:
        if name == "last_word":
            results.append(last_word(model, tokenizer, text, n_items, seed, context_tokens, batch_size, progress))
        else:
            results.append(
                cloze(model, tokenizer, text, n_items, seed, n_choices, context_tokens, batch_size, progress)
            )
    return results
