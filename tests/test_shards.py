"""Reading safetensors shards tensor by tensor (no memory map), and refusing damaged ones."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from duogpt.errors import UsageError
from duogpt.shards import ShardReader, ShardWriter

TENSORS = {
    "a": torch.randn(3, 5),
    "b": torch.randn(7).to(torch.bfloat16),
    "c": torch.arange(6, dtype=torch.int64).view(2, 3),
    "d": torch.tensor([1, 2**63 + 5], dtype=torch.uint64),
    "e": torch.zeros(0, 4),
}


def test_reads_every_dtype_exactly_and_with_spare_room(tmp_path):
    writer = ShardWriter(tmp_path, "m")
    writer.write(dict(list(TENSORS.items())[:2]))
    writer.write(dict(list(TENSORS.items())[2:]))
    writer.finish()
    reader = ShardReader(tmp_path, "m")
    for name, t in TENSORS.items():
        got = reader.get(name)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name
    padded = reader.get("b", spare=4)
    assert torch.equal(padded, TENSORS["b"]) and padded.untyped_storage().nbytes() == (7 + 4) * 2
    assert torch.equal(reader.get("a", torch.float64), TENSORS["a"].double())
    assert reader.dtype_of("d") == torch.uint64


def test_metadata_is_one_key_so_files_are_reproducible(tmp_path):
    with pytest.raises(ValueError, match="exactly one key"):
        ShardWriter(tmp_path, "m", {"a": "1", "b": "2"})
    ShardWriter(tmp_path, "x", {"v": "2"}).write({"a": TENSORS["a"]})
    with safe_open(str(tmp_path / "x-00001.safetensors"), "pt") as f:
        assert f.metadata() == {"v": "2"}


@pytest.mark.parametrize("cut", [0, 5, 8, 40, -3])
def test_truncated_shards_are_named(tmp_path, cut):
    save_file({"a": TENSORS["a"], "b": TENSORS["b"]}, str(tmp_path / "model.safetensors"))
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(UsageError, match="truncated or damaged"):
        ShardReader(tmp_path).get("b")


def test_an_index_naming_a_tensor_its_shard_lacks(tmp_path):
    save_file({"a": TENSORS["a"]}, str(tmp_path / "model-1.safetensors"))
    index = {"weight_map": {"a": "model-1.safetensors", "z": "model-1.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="does not hold it"):
        ShardReader(tmp_path).get("z")
    with pytest.raises(UsageError, match="has no tensor"):
        ShardReader(tmp_path).get("q")
