"""Built-in zero-shot tasks: item construction, scoring against oracles, chance level, errors."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config

from conftest import byte_tokenizer, tiny_model
from duogpt.corpus import load_text
from duogpt.errors import UsageError
from duogpt.evaluation import tasks
from duogpt.pruning import sparsify


@pytest.fixture(scope="module")
def brown() -> str:
    return load_text("brown", "eval")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


class TrieOracle(torch.nn.Module):
    """A stand-in LM that puts a high logit on the next token of any known sequence it is following."""

    def __init__(self, sequences, vocab: int = 256):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the scorer a device
        self.vocab = vocab
        self.trie: dict = {}
        for seq in sequences:
            node = self.trie
            for token in seq:
                node = node.setdefault(token, {})

    def forward(self, input_ids, attention_mask=None, **_):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            node = self.trie
            for t, token in enumerate(row):
                node = node.get(token)
                if not node:
                    break
                logits[b, t, list(node)] = 20.0
        return SimpleNamespace(logits=logits)


def _sequences(tok, pairs, max_context):
    return [sum(tasks.encode_pair(tok, ctx, cont, max_context), []) for ctx, cont in pairs]


def test_wilson_interval_known_values():
    assert tasks.wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert tasks.wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert tasks.wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    low, high = tasks.wilson_interval(81, 263)
    z2, p = 1.959963984540054**2, 81 / 263
    for bound in (low, high):  # each bound is where the score test statistic equals z
        assert (p - bound) ** 2 == pytest.approx(z2 * bound * (1 - bound) / 263)
    assert low < p < high


def test_sentences_keep_abbreviations_and_initials():
    doc = 'Mr. J. R. Smith left at 5 p.m. today. He said "Yes." Then he went home!\nA new line without a stop'
    got = [doc[a:b] for a, b in tasks.sentence_spans(doc)]
    assert got == ["Mr. J. R. Smith left at 5 p.m. today.", 'He said "Yes."', "Then he went home!", got[-1]]
    assert got[-1] == "A new line without a stop"
    assert tasks.documents("a\n\n \nb\nc\n\n") == ["a", "b\nc"]


def test_last_word_items_are_sentence_final_words_of_their_document(brown, tok):
    items = tasks.last_word_items(brown, tok, 40, seed=3, context_tokens=96)
    docs = tasks.documents(brown)
    for it in items:
        assert re.fullmatch(r" [A-Za-z]{3,}", it.target)
        # context + target is running text of its document, followed by the sentence's final punctuation
        assert re.search(re.escape(it.context + it.target) + r"""[.!?]""", docs[it.doc])
        # whole sentences within the budget, unless the target's own sentence is already too long
        assert len(tok(it.context)["input_ids"]) <= 96 or "\n" not in it.context
    assert items == tasks.last_word_items(brown, tok, 40, seed=3, context_tokens=96)
    assert items != tasks.last_word_items(brown, tok, 40, seed=4, context_tokens=96)


def test_cloze_items_take_distractors_from_other_documents(brown):
    items = tasks.cloze_items(brown, 50, seed=1, n_choices=5)
    docs = tasks.documents(brown)
    for it in items:
        doc = docs[it.doc]
        assert len(it.choices) == 5 and len(set(it.choices)) == 5
        assert it.context + it.choices[it.answer] in doc  # the true next sentence follows the context
        assert 2 <= len(tasks.sentence_spans(it.context)) <= 3
        own = {doc[a:b] for a, b in tasks.sentence_spans(doc)}
        assert not any(c.lstrip("\n ") in own for k, c in enumerate(it.choices) if k != it.answer)
    assert len({it.answer for it in items}) == 5  # the true sentence is not always in one place
    assert items == tasks.cloze_items(brown, 50, seed=1, n_choices=5)
    assert items != tasks.cloze_items(brown, 50, seed=2, n_choices=5)


def test_last_word_oracle_scores_all_and_needs_every_target_token(brown, tok):
    items = tasks.last_word_items(brown, tok, 30, seed=0, context_tokens=48)
    right = TrieOracle(_sequences(tok, [(it.context, it.target) for it in items], 48))
    result = tasks.last_word(right, tok, brown, n_items=30, context_tokens=48, batch_size=7, progress=False)
    assert (result.accuracy, result.n) == (1.0, 30)
    # an oracle that knows every token of the word but the last scores nothing (teacher forcing)
    wrong = TrieOracle(_sequences(tok, [(it.context, it.target[:-1] + "#") for it in items], 48))
    assert tasks.last_word(wrong, tok, brown, n_items=30, context_tokens=48, progress=False).accuracy == 0.0


def test_cloze_oracle_scores_all_and_a_distractor_oracle_none(brown, tok):
    items = tasks.cloze_items(brown, 24, seed=0, n_choices=4)
    right = TrieOracle(_sequences(tok, [(it.context, it.choices[it.answer]) for it in items], 64))
    result = tasks.cloze(right, tok, brown, n_items=24, context_tokens=64, batch_size=5, progress=False)
    assert (result.accuracy, result.n) == (1.0, 24)
    lure = TrieOracle(_sequences(tok, [(it.context, it.choices[(it.answer + 1) % 4]) for it in items], 64))
    assert tasks.cloze(lure, tok, brown, n_items=24, context_tokens=64, progress=False).accuracy == 0.0


def test_random_tiny_model_is_near_chance(brown, tok):
    model = tiny_model()
    cloze, last = tasks.run_builtin_tasks(
        model, tok, brown, names=("cloze", "last_word"), n_items=80, seed=0, progress=False, context_tokens=64
    )
    assert cloze.name == "cloze" and cloze.ci_low <= 0.25 <= cloze.ci_high
    assert last.name == "last_word" and last.accuracy < 0.05


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_scores_match_one_at_a_time(tok, family):
    if family == "llama":
        model = tiny_model()
    else:
        config = GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        model = tiny_model(config)
    texts = [("The jury said", " it"), ("A", " much longer continuation here"), ("Some context, then", " x")]
    pairs = [tasks.encode_pair(tok, c, t, 32) for c, t in texts]
    one = tasks.score_continuations(model, pairs, batch_size=1, progress=False)
    many = tasks.score_continuations(model, pairs, batch_size=3, progress=False)
    assert [s.tokens for s in one] == [3, 30, 2]
    for a, b in zip(one, many, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.greedy == b.greedy
    # direct check of the first pair against an unpadded forward
    ctx, cont = pairs[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
    direct = sum(float(logits[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
    assert one[0].logprob == pytest.approx(direct, abs=1e-4)


def test_results_carry_interval_and_json_and_sparsifiers_stay_active(brown, tok):
    model = tiny_model()
    names = [f"layers.{i}.{g}" for i in range(2) for g in ("qkv", "o", "gate_up", "down")]
    sparsify.install(model, {n: 0.01 for n in names})
    (result,) = tasks.run_builtin_tasks(model, tok, brown, names=("cloze",), n_items=10, progress=False)
    assert result.ci_low <= result.accuracy <= result.ci_high and result.seconds > 0
    assert json.loads(json.dumps(result.to_json())) == result.to_json()
    assert set(result.to_json()) == {"name", "accuracy", "n", "ci_low", "ci_high", "seconds"}
    assert all(sp.calls > 0 for sp in sparsify.registry(model).values())


def test_too_little_text_and_bad_arguments_are_usage_errors(tok):
    model = tiny_model()
    short = "One small doc. It has a few sentences here. And another one follows.\n\nA second doc is here too."
    with pytest.raises(UsageError, match="fewer than the 5 requested"):
        tasks.last_word(model, tok, short, n_items=5, progress=False)
    with pytest.raises(UsageError, match="fewer than the 5 requested"):
        tasks.cloze(model, tok, short, n_items=5, progress=False)
    one_doc = " ".join(f"Sentence number {k} ends with a word." for k in range(40))
    with pytest.raises(UsageError, match="from other documents"):
        tasks.cloze(model, tok, one_doc, n_items=2, progress=False)
    with pytest.raises(UsageError, match="unknown task"):
        tasks.run_builtin_tasks(model, tok, one_doc, names=("hellaswag",))
    with pytest.raises(UsageError, match="n_items must be a positive"):
        tasks.last_word(model, tok, one_doc, n_items=0)
    with pytest.raises(UsageError, match="at least 2 choices"):
        tasks.cloze(model, tok, one_doc, n_choices=1)
