"""Decode cost model: bytes read from memory per generated token.

At batch-1 decode every weight matrix is read once per token and the arithmetic is
negligible next to it, so a token's time is modelled as proportional to the bytes it reads:

- a dense linear (n, k) reads ``n k b`` bytes (``b`` bytes per value);
- a dual-sparse linear in the column-segment format (duogpt/sparse_format.py) reads, for each
  of the ``(1 - p_x) k`` active columns, its bitmap and offset in every row tile
  (``ceil(n / T) (T / 8 + 8)`` bytes for tiles of ``T`` rows) and its ``(1 - p_w) n`` values;
- attention reads the KV cache: ``2 L h_kv d b`` bytes per block at context length ``L``;
- the LM head reads its dense ``vocab x hidden`` matrix, the embedding one row.

Norms, rotary tables and the activations themselves are ignored (a few KB per block).
The estimated speedup of a model is the dense model's bytes over its bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import nn

from duogpt.models import find_blocks
from duogpt.runtime.format import DEFAULT_TILE_ROWS
from duogpt.runtime.linear import weight_facts


@dataclass
class DecodeCost:
    """Bytes per decoded token, by part."""

    linears: float
    attention: float
    head: float

    @property
    def total(self) -> float:
        return self.linears + self.attention + self.head

    def to_json(self) -> dict:
        return dict(asdict(self), total=self.total)


def dense_linear_bytes(n: int, k: int, value_bytes: int) -> float:
    return float(n * k * value_bytes)


def sparse_linear_bytes(
    n: int, k: int, value_bytes: int, p_w: float, p_x: float, tile_rows: int = DEFAULT_TILE_ROWS
) -> float:
    """Bytes the spMspV kernel reads for one token (see the module docstring)."""
    active = (1.0 - p_x) * k
    index = math.ceil(n / tile_rows) * (tile_rows / 8 + 8)
    return active * index + (1.0 - p_x) * (1.0 - p_w) * n * k * value_bytes


def _config_dims(config) -> tuple[int, int, int]:
    """(blocks, KV heads, head size) from a transformers config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv, head_dim


def decode_cost(
    model: nn.Module,
    act_sparsity: dict[str, float] | None = None,
    context: int = 512,
    sparse_runtime: bool = True,
    tile_rows: int = DEFAULT_TILE_ROWS,
) -> DecodeCost:
    """Bytes per token of ``model`` as it stands (its zeros counted from the weights).

    ``act_sparsity`` maps 'layers.{i}.{group}' to the fraction of zero inputs of that group
    (e.g. measured at evaluation); missing groups count as dense. With ``sparse_runtime``
    False every linear is read densely (the dense runtime, or a structurally pruned model).
    """
    _, blocks = find_blocks(model)
    act_sparsity = act_sparsity or {}
    linears = 0.0
    for block in blocks:
        for group, members in block.groups.items():
            p_x = act_sparsity.get(f"layers.{block.index}.{group}") or 0.0
            for linear in members.values():
                n, k, b, zeros = weight_facts(linear)
                if sparse_runtime:
                    p_w = zeros / (n * k)
                    linears += sparse_linear_bytes(n, k, b, p_w, p_x, tile_rows)
                else:
                    linears += dense_linear_bytes(n, k, b)
    attention, head = fixed_bytes(model, context)
    return DecodeCost(linears, attention, head)


def fixed_bytes(model: nn.Module, context: int = 512) -> tuple[float, float]:
    """(attention, head) bytes per token: the parts no sparsity changes. Shapes only (meta tensors will do)."""
    layers, kv, head_dim = _config_dims(model.config)
    vb = next(model.parameters()).element_size()
    attention = 2.0 * layers * context * kv * head_dim * vb
    head = model.get_output_embeddings().weight.numel() * vb + model.config.hidden_size * vb
    return attention, float(head)


def config_cost(
    config,
    value_bytes: int,
    p_w: float = 0.0,
    p_x: float = 0.0,
    context: int = 512,
    mlp_keep: float = 1.0,
    kv_keep: float = 1.0,
    blocks_keep: int | None = None,
    tile_rows: int = DEFAULT_TILE_ROWS,
) -> DecodeCost:
    """The same estimate from a config alone, for planning before anything is pruned.

    Dual sparsity (``p_w``, ``p_x`` > 0) uses the sparse format on every linear; structured
    pruning keeps ``mlp_keep`` of the MLP channels, ``kv_keep`` of the KV groups and
    ``blocks_keep`` blocks, read densely.
    """
    layers, kv, head_dim = _config_dims(config)
    layers = layers if blocks_keep is None else blocks_keep
    hidden, ffn, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    kv_kept = kv * kv_keep
    q_dim, kv_dim = heads * kv_keep * head_dim, kv_kept * head_dim
    ffn_kept = ffn * mlp_keep
    shapes = [(q_dim, hidden), (kv_dim, hidden), (kv_dim, hidden), (hidden, q_dim)]
    shapes += [(ffn_kept, hidden), (ffn_kept, hidden), (hidden, ffn_kept)]
    dual = p_w > 0 or p_x > 0
    per_block = sum(
        sparse_linear_bytes(int(n), int(k), value_bytes, p_w, p_x, tile_rows)
        if dual
        else dense_linear_bytes(n, k, value_bytes)
        for n, k in shapes
    )
    attention = 2.0 * layers * context * kv_kept * head_dim * value_bytes
    head = (config.vocab_size * hidden + hidden) * value_bytes
    return DecodeCost(layers * per_block, attention, float(head))
