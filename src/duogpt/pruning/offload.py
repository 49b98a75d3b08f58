"""Out-of-core prunes: the model's blocks live in its checkpoint, one at a time in memory.

The model is built from its config with empty (meta) parameters; the embeddings, final norm
and LM head are read from the safetensors shards at the start (after the calibration text is
tokenized; released once the calibration inputs are captured, read again for the writer),
each decoder block just before the pipeline reaches it. A finished block goes to the
checkpoint writer and its parameters back to the meta device, and a group's calibration
inputs wait in files (``spill.py``), so the peak is about one block, its statistics, the
calibration streams and one chunk of the group's inputs, whatever the model's size.

glibc raises its mmap threshold after large frees, after which freed blocks and solver
workspaces stay in the heap and the resident size creeps up block after block; an
out-of-core prune fixes the threshold at 8 MiB so large buffers go back to the system when
freed (measured: flat at about 1 GB over 8 blocks of a 345 MB model instead of growing to
1.4 GB, for about 10% more time).
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from torch import nn

from duogpt import memory
from duogpt.errors import UsageError
from duogpt.models import DTYPES, Block, layers_prefix, resolve_model_path, source_dtype
from duogpt.shards import ShardReader


class OffloadedBlocks:
    """Brings a block's weights in from the shards (``load``) and hands it on and out (``done``)."""

    def __init__(self, reader: ShardReader, prefix: str, dtype: torch.dtype, on_done=None):
        self.reader, self.prefix, self.dtype, self.on_done = reader, prefix, dtype, on_done

    def load(self, block: Block) -> None:
        for name, _ in list(block.module.named_parameters()):
            value = self.reader.get(f"{self.prefix}.{block.index}.{name}", self.dtype)
            set_module_tensor_to_device(block.module, name, "cpu", value=value)

    def done(self, block: Block) -> None:
        if self.on_done is not None:
            self.on_done(block)
        block.module.to("meta")

    def release_rest(self, model: nn.Module) -> None:
        """The embeddings, final norm and LM head to the meta device once the calibration inputs are
        captured: nothing reads them until the writer (7B: 0.5 GB in bfloat16; Llama-3-70B: 4 GB)."""
        for name, _ in list(model.named_parameters(remove_duplicate=False)):  # tied names too: all must let go
            if not name.startswith(self.prefix + "."):
                set_module_tensor_to_device(model, name, "meta")

    def restore_rest(self, model: nn.Module) -> None:
        """Read the non-block weights back from the shards (for the writer)."""
        load_rest(model, self.reader, self.prefix, self.dtype)


def local_checkpoint(model: str | None) -> Path:
    """A local directory with the model's config, tokenizer and safetensors (downloaded for a hub id)."""
    path = resolve_model_path(model)
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:  # network or hub failures
        raise UsageError(f"could not download {path!r} ({type(err).__name__}): check the id and the network") from None


def load_offloaded(model: str | None, dtype: str = "auto"):
    """(model with every weight empty, tokenizer, ShardReader, layers prefix) for an out-of-core prune:
    ``OffloadedBlocks.restore_rest`` reads the weights outside the blocks (after the calibration text
    is tokenized, which holds a few hundred MB of its own for a while)."""
    memory.return_large_buffers()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = local_checkpoint(model)
    reader = ShardReader(path)
    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    value_dtype = DTYPES.get(dtype) or source_dtype(config)
    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=value_dtype)
    skeleton.eval()
    return skeleton, tokenizer, reader, layers_prefix(skeleton)


def load_rest(model: nn.Module, reader: ShardReader, prefix: str, dtype: torch.dtype) -> None:
    """The weights outside the decoder blocks, from the shards (tied ones tied again)."""
    for name, _ in list(model.named_parameters()):
        if not name.startswith(prefix + ".") and name in reader:
            set_module_tensor_to_device(model, name, "cpu", value=reader.get(name, dtype))
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(prefix + ".")]
    if missing:
        raise UsageError(f"{reader.directory} has no tensor {missing[0]!r}: the checkpoint does not match its config")
