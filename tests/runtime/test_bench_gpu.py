"""The GPU benchmark's bookkeeping (choosing winners, rendering) and its refusal without CUDA."""

from __future__ import annotations

import pytest
import torch

from duogpt.cli import main
from duogpt.runtime import bench_gpu


def sweep_records():
    rec = lambda shape, tile, config, ms, err=1e-7: {  # noqa: E731
        "shape": list(shape), "tile_rows": tile, "config": config, "graph_ms": ms, "max_rel_error": err,
    }  # fmt: skip
    return [
        rec((8, 8), 64, "a", 1.0),
        rec((8, 8), 64, "b", 0.5, err=0.5),  # fastest, but wrong: never a winner
        rec((8, 8), 128, "a", 0.8),
        rec((4, 4), 64, "a", 2.0),
        {"shape": [4, 4], "tile_rows": 64, "config": "b", "error": "CompilationError"},
        rec((4, 4), 128, "a", 0.1),
    ]


def test_winners_skip_wrong_and_failed_launch_shapes():
    best = bench_gpu.best_by_shape(sweep_records())
    assert (best[(8, 8)]["tile_rows"], best[(8, 8)]["config"]) == (128, "a")
    assert best[(4, 4)]["graph_ms"] == 0.1
    per_tile = bench_gpu.best_by_tile(sweep_records())
    assert per_tile[64] == ("a", 3.0)  # "b" failed on one shape and was wrong on the other
    assert per_tile[128] == ("a", pytest.approx(0.9))


def test_markdown_has_every_record_and_the_stack():
    gemv = {"shape": [8, 8], "p_w": 0.5, "p_x": 0.5, "rows": 1, "tile_rows": 64, "config": "16,256,4,1,16",
            "dense_graph_ms": 0.02, "roofline_ms": 0.01, "sparse_graph_ms": 0.01, "speedup": 2.0,
            "roofline_speedup": 1.0, "dense_eager_ms": 0.03, "sparse_eager_ms": 0.05}  # fmt: skip
    stack = {"layers": 2, "dense_graph_ms": 1.0, "sparse_graph_ms": 0.5, "graph_speedup": 2.0, "dense_eager_ms": 5,
             "sparse_eager_ms": 6, "eager_speedup": 0.83, "dense_decode_tok_s": 200, "sparse_decode_tok_s": 100,
             "decode_speedup": 0.5}  # fmt: skip
    result = {"device": "GPU X", "torch": "t", "triton": "3", "bandwidth_gbps": 4000.0,
              "parts": {"gemv": [gemv], "stack": stack}, "best_by_tile": {"64": ["16,256,4,1,16", 0.02]}}  # fmt: skip
    text = bench_gpu.gpu_markdown(result)
    assert "| 8x8 | 0.5/0.5 | 1 | 20.0 | 10.0 | 10.0 | 64:16,256,4,1,16 | 2.00x | 1.00x | 30.0 | 50.0 |" in text
    assert "| 64 | 16,256,4,1,16 | 20.0 |" in text
    assert "dense 1.000 ms vs sparse 0.500 ms as CUDA graphs (2.00x)" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_gpu_without_cuda_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA device" in err[0]
    assert not out.exists()
