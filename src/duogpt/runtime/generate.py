"""Generation through ``transformers``' ``generate()``, timed (prefill apart from decode), and a bare timed loop.

``generate`` is what ``duogpt generate`` runs: the model's own ``generate()`` (greedy or
sampling, with the KV cache), timed by a streamer that notes when each token arrives.
``greedy`` is a minimal decode loop with a KV cache, used by the benchmarks to time decode
steps alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Generation:
    text: str
    tokens: list[int]
    prefill_seconds: float
    decode_seconds: float

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")


class _Clock:
    """A generate() streamer that records when the prompt and each new token arrive."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, _value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    min_new_tokens: int = 0,
) -> Generation:
    """``model.generate()`` on ``prompt``: greedy, or sampling with ``temperature`` / ``top_p``
    (``min_new_tokens``: no end-of-sequence before that many, as benchmarks need)."""
    enc = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    if seed is not None:
        torch.manual_seed(seed)
    clock = _Clock()
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    if not do_sample:  # the checkpoint's generation_config may ask for sampling settings greedy ignores
        sampling.update(temperature=None, top_p=None, top_k=None)
    start = time.perf_counter()
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None,
        streamer=clock,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **sampling,
    )
    tokens = out[0, enc["input_ids"].shape[1] :].tolist()
    first = clock.times[1] if len(clock.times) > 1 else start
    decode = clock.times[-1] - first if len(clock.times) > 2 else 0.0
    return Generation(tokenizer.decode(tokens, skip_special_tokens=True), tokens, first - start, decode)


@torch.no_grad()
def greedy(model, input_ids: torch.Tensor, max_new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy decode with a KV cache; returns (new tokens, prefill seconds, decode seconds).

    The first new token comes from the prefill; every later one is a timed decode step.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, cache=cache, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    prefill = time.perf_counter() - t0
    tokens = [int(token)]
    t0 = time.perf_counter()
    for _ in range(max_new_tokens - 1):
        out = model(input_ids=token, cache=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
    return tokens, prefill, time.perf_counter() - t0
