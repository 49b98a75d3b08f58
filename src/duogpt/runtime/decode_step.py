"""A lean decode step for Llama-style decoder layers: transformers' arithmetic for one new token, fewer calls.

On a CPU a decode step of a small model spends more time around the arithmetic than in it:
transformers' layer forward goes through decorators, kwargs plumbing, the attention-interface
lookup, ``rotate_half`` (slices, a negation and a concatenation per tensor) and hub-kernel
wrappers: 0.15 ms per layer and token on the 135M default model (measured: docs/kernel.md).
``lean_decode(model)`` gives every qualifying layer a forward that, for a decode step, does

    a = input_layernorm(h)
    q, k, v = q_proj(a), k_proj(a), v_proj(a)          (viewed as (b, heads, 1, head_dim))
    q, k = q_norm(q), k_norm(k)                         (Qwen3 only)
    q, k = rope(q), rope(k)                             (unless the layer has use_rope False)
    k, v = cache.update(k, v, layer_idx)
    h = h + o_proj(sdpa(q, k, v, scale=scaling, enable_gqa=kv heads < heads))
    h = h + down_proj(act_fn(gate_proj(m)) * up_proj(m)),  m = post_attention_layernorm(h)

with ``rope(t) = t * cos + roll(t, d/2) * [-sin_1, sin_2]`` (the signed sine made once per step
and shared by the layers). Element by element that is transformers' ``t * cos + rotate_half(t) *
sin``, ``rotate_half(t) = [-t_2, t_1]``, since negation is exact: the outputs are the same bits
(tested per family, dense and sparse runtime). Modules are called as modules, so forward hooks
(the activation sparsifiers of the dense runtime) still run.

A *decode step* here: one new token per row, a KV cache, no attention mask (transformers
passes none when every cached position is visible, as in greedy or sampled ``generate()``
without padding), sdpa attention with head_dim <= 256 (where transformers uses sdpa's GQA),
eval mode, no attention weights asked for. Every other call (prefill, padding masks, sliding
windows that mask, static caches, training) runs the layer's own forward unchanged.

Layers qualify by class (``LAYERS``: the families whose transformers 5 decoder layer, attention
and MLP are this code) and by structure (exactly these children), so a family that differs
keeps transformers' forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = frozenset(
    {
        "LlamaDecoderLayer",
        "MistralDecoderLayer",
        "Qwen2DecoderLayer",
        "Qwen3DecoderLayer",
        "GemmaDecoderLayer",
        "SmolLM3DecoderLayer",
    }
)
_LAYER_CHILDREN = {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}
_ATTN_CHILDREN = {"q_proj", "k_proj", "v_proj", "o_proj"}
_QK_NORMS = {"q_norm", "k_norm"}
_MLP_CHILDREN = {"gate_proj", "up_proj", "down_proj", "act_fn"}


class _Rope:
    """Rotary embedding for one decode step, shared by a model's layers: the cosine and the signed
    sine are shaped once per step (the model makes one (cos, sin) pair per forward)."""

    def __init__(self):
        self.sin = None  # the step's sine (held, so that an identity check cannot be fooled by a reused id)
        self.cos_b = self.signed = None

    def __call__(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if sin is not self.sin:
            half = sin.shape[-1] // 2
            self.cos_b = cos.unsqueeze(1)
            self.signed = torch.cat((-sin[..., :half], sin[..., half:]), -1).unsqueeze(1)
            self.sin = sin
        return t * self.cos_b + t.roll(t.shape[-1] // 2, -1) * self.signed


def qualifies(layer: nn.Module) -> bool:
    """Whether ``layer`` is a decoder layer the lean step reproduces exactly (class and children)."""
    if type(layer).__name__ not in LAYERS or set(layer._modules) != _LAYER_CHILDREN:
        return False
    attn, mlp = layer.self_attn, layer.mlp
    names = set(attn._modules)
    if not (_ATTN_CHILDREN <= names <= _ATTN_CHILDREN | _QK_NORMS) or len(names & _QK_NORMS) == 1:
        return False
    return _MLP_CHILDREN <= set(mlp._modules) | set(vars(mlp)) and all(
        hasattr(attn, a) for a in ("head_dim", "scaling", "layer_idx", "num_key_value_groups", "config")
    )


def lean_decode(model: nn.Module, enabled: bool = True) -> int:
    """Give every qualifying decoder layer of ``model`` the lean decode step (or, with ``enabled``
    False, its own forward back). Returns the number of layers that have it. Idempotent."""
    rope = _Rope()
    count = 0
    for layer in model.modules():
        if not qualifies(layer):
            continue
        if enabled:
            layer.forward = LeanForward(layer, rope)
            count += 1
        elif isinstance(vars(layer).get("forward"), LeanForward):
            del layer.forward
    return count


def has_lean_decode(model: nn.Module) -> bool:
    return any(isinstance(vars(m).get("forward"), LeanForward) for m in model.modules())


class LeanForward:
    """A layer's forward (an instance attribute, so ``del layer.forward`` gives transformers' back): the
    lean step for a decode step, else the layer class's own forward. An object rather than a bound
    method so that copies and pickles of the model keep it, bound to their own layer and rope."""

    def __init__(self, layer: nn.Module, rope: _Rope):
        self.layer, self.rope = layer, rope

    def __call__(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        layer = self.layer
        if not _is_decode_step(layer, hidden_states, args, kwargs):
            return type(layer).forward(layer, hidden_states, *args, **kwargs)
        return _lean_step(layer, self.rope, hidden_states, kwargs)


def _is_decode_step(layer, hidden_states: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    attn = layer.self_attn
    pos = kwargs.get("position_embeddings")
    return (
        not args
        and hidden_states.dim() == 3
        and hidden_states.shape[1] == 1
        and kwargs.get("attention_mask") is None
        and pos is not None
        and pos[1].shape[-1] == attn.head_dim <= 256
        and _cache(kwargs) is not None
        and not kwargs.get("output_attentions")
        and not layer.training
        and attn.config._attn_implementation == "sdpa"
    )


def _cache(kwargs: dict):
    """The layer call's KV cache: ``cache`` (transformers >= 5.25) or ``past_key_values`` (earlier 5.x)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def _lean_step(self, rope: _Rope, hidden_states: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """One decode step of layer ``self`` (see the module's docstring)."""
    attn, mlp = self.self_attn, self.mlp
    cache = _cache(kwargs)
    b, d = hidden_states.shape[0], attn.head_dim
    a = self.input_layernorm(hidden_states)
    q = attn.q_proj(a).view(b, -1, 1, d)
    k = attn.k_proj(a).view(b, -1, 1, d)
    v = attn.v_proj(a).view(b, -1, 1, d)
    if "q_norm" in attn._modules:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if getattr(attn, "use_rope", True):
        cos, sin = kwargs["position_embeddings"]
        q, k = rope(q, cos, sin), rope(k, cos, sin)
    k, v = cache.update(k, v, attn.layer_idx)
    o = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling, enable_gqa=attn.num_key_value_groups > 1)
    h = hidden_states + attn.o_proj(o.reshape(b, 1, -1))
    m = self.post_attention_layernorm(h)
    return h + mlp.down_proj(mlp.act_fn(mlp.gate_proj(m)) * mlp.up_proj(m))
