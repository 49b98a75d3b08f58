"""Per-chunk store: the tensors come back as they went in, in memory or through files."""

from __future__ import annotations

import pytest
import torch

from duogpt.pruning.spill import ChunkStore


@pytest.mark.parametrize("on_disk", [False, True])
def test_chunks_come_back_bit_for_bit_and_once(tmp_path, on_disk):
    store = ChunkStore(tmp_path / "chunks" if on_disk else None)
    made = {f"x.{i}": torch.randn(5, 7).to(dtype) for i, dtype in enumerate((torch.float32, torch.bfloat16))}
    made["strided"] = torch.randn(6, 4).T  # not contiguous
    for key, value in made.items():
        store.put(key, value)
    if on_disk:
        assert len(list((tmp_path / "chunks").iterdir())) == 3
    for key, value in made.items():
        back = store.take(key)
        assert back.dtype == value.dtype and back.shape == value.shape and torch.equal(back, value)
        with pytest.raises(KeyError):
            store.take(key)
    if on_disk:
        assert not list((tmp_path / "chunks").iterdir())  # each file goes when its chunk is taken
    store.close()


def test_files_of_an_interrupted_run_are_cleared(tmp_path):
    (tmp_path / "chunks").mkdir()
    (tmp_path / "chunks" / "raw.0.bin").write_bytes(b"stale")
    store = ChunkStore(tmp_path / "chunks")
    assert not list((tmp_path / "chunks").iterdir())
    store.put("a", torch.ones(3))
    store.close()
    assert not (tmp_path / "chunks").exists()
