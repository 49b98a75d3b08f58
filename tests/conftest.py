"""Tiny randomly initialised models and a byte-level tokenizer, built in the tests."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton kernels run under its interpreter on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

TEXT = (
    "The jury further said in term-end presentments that the City Executive Committee, which had "
    "over-all charge of the election, deserves the praise and thanks of the City of Atlanta for the "
    "manner in which the election was conducted. "
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 256-token byte-level tokenizer (no merges), built offline."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=sorted(alphabet)[0])


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer plus a '<bos>' (id 256) that it adds to every plain encode, as Gemma's does."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<bos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token=sorted(alphabet)[0])


def tiny_llama_config(**overrides) -> LlamaConfig:
    settings = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_model(config=None, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config or tiny_llama_config(), dtype=torch.float32)
    return model.eval()


@pytest.fixture
def tiny_llama():
    return tiny_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A saved tiny Llama checkpoint directory with its tokenizer."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tiny_model().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT * 40)
    return path


@pytest.fixture
def samples():
    torch.manual_seed(1)
    return torch.randint(0, 256, (8, 32))


@pytest.fixture(scope="session", autouse=True)
def leaves_no_files_behind():
    """The suite writes only under pytest's temporary folders and the caches, never into the checkout."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def status() -> set[str]:
        try:
            out = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, capture_output=True, text=True
            )
        except OSError:
            return set()
        return set(out.stdout.splitlines()) if out.returncode == 0 else set()

    before = status()
    yield
    new = status() - before
    assert not new, f"the tests left files in the checkout: {sorted(new)}"
