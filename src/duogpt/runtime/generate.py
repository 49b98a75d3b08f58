"""Greedy generation with a timed decode loop (prefill timed apart from decode)."""

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


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 32) -> Generation:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    tokens, prefill, decode = greedy(model, ids, max_new_tokens)
    return Generation(tokenizer.decode(tokens, skip_special_tokens=True), tokens, prefill, decode)
