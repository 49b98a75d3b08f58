"""The sparse runtime: same model as the dense runtime, packed files, generate and bench."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from duogpt import checkpoint
from duogpt.cli import main
from duogpt.config import PruneConfig
from duogpt.errors import UsageError
from duogpt.pruning import sparsify
from duogpt.pruning.pipeline import prune_model
from duogpt.runtime import bench
from duogpt.runtime.generate import generate, greedy
from duogpt.runtime.kernels import triton_spmspv
from duogpt.runtime.linear import (
    GPU_PATH_ENV,
    DecodeHead,
    DualSparseLinear,
    choose_tile_rows,
    linears_by_name,
    packed_form,
    to_sparse_runtime,
    use_kernels,
    weight_facts,
)


def pruned_tiny(samples, dtype=torch.float32):
    model = tiny_model().to(dtype)
    cfg = PruneConfig(method="duogpt", nsamples=8, seqlen=32, batch_size=4, blocksize=16)
    result = prune_model(model, samples, cfg, progress=False)
    model.duogpt_report = result
    return model, result.thresholds


def save_pruned(model, out, layout="compact"):
    """The model as a pruned checkpoint; returns its duogpt.json."""
    checkpoint.save(model, None, {"base_model": "tiny", **model.duogpt_report.to_json()}, out, layout=layout)
    return checkpoint.read_meta(out)


def test_sparse_runtime_computes_the_same_model(samples):
    model, thresholds = pruned_tiny(samples)
    masked = {name: lin.weight.detach().clone() for name, (_, _, lin) in linears_by_name(model).items()}
    sparsify.uninstall(model)
    to_sparse_runtime(model)
    sparsify.install(model, thresholds)
    assert sum(isinstance(m, DualSparseLinear) for m in model.modules()) == 14
    prompt = samples[:1, :8]
    use_kernels(model, False)
    dense_tokens, _, _ = greedy(model, prompt, 16)
    use_kernels(model, True)
    sparse_tokens, _, _ = greedy(model, prompt, 16)
    assert dense_tokens == sparse_tokens
    with torch.no_grad():  # a decode-sized input goes through the kernel and matches
        lin = model.model.layers[0].mlp.down_proj
        x = torch.randn(1, 1, lin.in_features)
        xs = sparsify.sparsify(x, thresholds["layers.0.down"])  # the sparsifier hook runs first
        torch.testing.assert_close(lin(x), F.linear(xs, masked["layers.0.mlp.down_proj"]), rtol=1e-5, atol=1e-5)


def test_packed_linear_holds_no_dense_weight(samples):
    model, _ = pruned_tiny(samples, torch.bfloat16)
    original = model.model.layers[1].mlp.up_proj
    lin = DualSparseLinear.from_linear(original)
    assert [n for n, _ in lin.named_parameters()] == [] and lin.state_dict() == {}
    held = sum(b.numel() * b.element_size() for b in lin.buffers())
    assert held < 0.75 * original.weight.numel() * original.weight.element_size()  # 50%: values + 1/16 bitmaps
    assert torch.equal(lin.weight, original.weight)  # unpacked on access, exactly
    assert weight_facts(lin) == weight_facts(original)


def test_batched_path_equals_the_masked_dense_product(samples):
    model, _ = pruned_tiny(samples)
    a, b = model.model.layers[0].self_attn.q_proj, model.model.layers[1].mlp.down_proj
    sa, sb = DualSparseLinear.from_linear(a), DualSparseLinear.from_linear(b)
    xa, xb = torch.randn(2, 20, a.in_features), torch.randn(40, b.in_features)
    with torch.no_grad():  # both share the thread's unpack buffer, one after the other
        assert torch.equal(sa(xa), F.linear(xa, a.weight))
        assert torch.equal(sb(xb), F.linear(xb, b.weight))
        assert torch.equal(sa(xa), F.linear(xa, a.weight))
    x = torch.randn(20, a.in_features, requires_grad=True)  # with autograd: a weight of its own
    sa(x).sum().backward()
    torch.testing.assert_close(x.grad, a.weight.detach().sum(0).expand(20, -1))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_batched_half_precision_in_float32_where_the_cpu_has_no_half_matmul(monkeypatch, fast, dtype):
    """Without a native half-precision matmul the prompt is multiplied in float32 (then rounded to the
    model's dtype); with one, in the dtype. Either way the product of the packed weight, with its bias."""
    from types import SimpleNamespace

    from duogpt.runtime import linear as runtime_linear
    from duogpt.runtime.format import pack

    seen = []

    def spy(x, w, b=None):
        seen.append(w.dtype)
        return F.linear(x, w, b)

    monkeypatch.setattr(runtime_linear, "fast_half_matmul", lambda dt, device: fast)
    monkeypatch.setattr(runtime_linear, "F", SimpleNamespace(linear=spy))
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(96, 80, generator=gen).to(dtype)
    W[torch.rand(96, 80, generator=gen) < 0.5] = 0
    bias = torch.randn(96, generator=gen).to(dtype)
    lin = DualSparseLinear(pack(W, 64), bias)
    x = torch.randn(3, 30, 80, generator=gen).to(dtype)
    with torch.no_grad():
        y = lin(x)
        again = lin(x)  # the widened weight reuses the thread's float32 buffer
    assert seen == [dtype if fast else torch.float32] * 2
    assert y.dtype == dtype and y.shape == (3, 30, 96) and torch.equal(y, again)
    torch.testing.assert_close(y, (x.float() @ W.float().T + bias.float()).to(dtype), rtol=1e-2, atol=2e-2)
    x.requires_grad_(True)  # with autograd: a weight of its own, gradients flow
    lin(x).float().sum().backward()
    torch.testing.assert_close(x.grad.float(), W.float().sum(0).expand(3, 30, -1), rtol=1e-2, atol=2e-2)


@pytest.mark.skipif(not triton_spmspv.available(), reason="triton is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_branch_under_the_triton_interpreter(samples, monkeypatch, dtype):
    model, _ = pruned_tiny(samples, dtype)
    lin = model.model.layers[0].mlp.gate_proj
    packed = DualSparseLinear.from_linear(lin)
    if torch.cuda.is_available():
        pytest.skip("runs the CUDA branch on CPU tensors; tests/test_checkpoint.py covers the device")
    monkeypatch.setenv(GPU_PATH_ENV, "1")
    with torch.no_grad():
        for rows in (1, 3, 20):  # decode kernel, small batch, batched path (Triton unpack)
            x = torch.randn(rows, lin.in_features).to(dtype)
            x[torch.rand(x.shape) < 0.5] = 0
            torch.testing.assert_close(packed(x).float(), F.linear(x, lin.weight).float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(packed.weight.contiguous(), lin.weight)


def _decode_outputs(model, prompt):
    """Every pruned linear's output and the logits of one decode step after an 8-token prompt."""
    outs = {}
    hooks = [
        lin.register_forward_hook(lambda _m, _a, y, name=name: outs.__setitem__(name, y.clone()))
        for name, (_, _, lin) in linears_by_name(model).items()
    ]
    with torch.no_grad():
        from transformers import DynamicCache

        cache = DynamicCache()
        model(input_ids=prompt, cache=cache, use_cache=True)
        logits = model(input_ids=prompt[:, -1:], cache=cache, use_cache=True).logits
    for h in hooks:
        h.remove()
    return outs, logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linears_sharing_an_input_compute_together_with_the_same_bits(samples, dtype):
    """q/k/v and gate/up of each block make one kernel call (share_inputs), the head its one-row product by
    the dense kernel (DecodeHead, still tied to the embeddings): every linear's output is bit for bit what
    it computes alone, the logits match torch's head."""
    model, thresholds = pruned_tiny(samples, dtype)
    sparsify.uninstall(model)
    to_sparse_runtime(model)
    sparsify.install(model, thresholds)
    head = model.get_output_embeddings()
    assert isinstance(head, DecodeHead) and head.weight is model.model.embed_tokens.weight
    q = model.model.layers[0].self_attn.q_proj
    group, slot = q.shared
    assert slot == 0 and [m for m in group.members] == [q, model.model.layers[0].self_attn.k_proj,
                                                         model.model.layers[0].self_attn.v_proj]  # fmt: skip
    assert model.model.layers[0].mlp.down_proj.shared is None
    prompt = samples[:1, :8]
    linked, logits = _decode_outputs(model, prompt)
    shared = {}
    for name, (_, _, lin) in linears_by_name(model).items():
        shared[name], lin.shared = lin.shared, None
    plain = torch.nn.Linear(head.in_features, head.out_features, bias=False, device="meta", dtype=dtype)
    plain.weight = head.weight
    model.set_output_embeddings(plain)
    alone, torch_logits = _decode_outputs(model, prompt)
    assert linked.keys() == alone.keys() and len(linked) == 14
    for name in linked:
        assert torch.equal(linked[name], alone[name]), name
    torch.testing.assert_close(logits, torch_logits, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-4)


def test_a_member_called_with_another_input_gets_its_own_product(samples):
    model, _ = pruned_tiny(samples)
    to_sparse_runtime(model)
    attn = model.model.layers[1].self_attn
    x, other = torch.randn(1, 1, attn.q_proj.in_features), torch.randn(1, 1, attn.q_proj.in_features)
    with torch.no_grad():
        q = attn.q_proj(x)  # computes q, k and v of x
        k_other = attn.k_proj(other)  # not x: its own product, and the pending ones are dropped
        v = attn.v_proj(x)
        expected = {name: F.linear(inp, lin.weight) for name, lin, inp in
                    (("q", attn.q_proj, x), ("k", attn.k_proj, other), ("v", attn.v_proj, x))}  # fmt: skip
    torch.testing.assert_close(q, expected["q"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_other, expected["k"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, expected["v"], rtol=1e-5, atol=1e-5)
    assert attn.q_proj.shared[0]._input is x  # v's call computed the group again, for x


def test_sparse_linears_apply_their_sparsifier_in_the_kernel(samples):
    """No hook on a packed linear: its sparsifier is attached and the CPU kernel applies the threshold, with the
    same result as the hook's pass; counting, switching off, dense prefill and uninstall behave as before."""
    model, thresholds = pruned_tiny(samples)
    sparsify.uninstall(model)
    to_sparse_runtime(model)
    sparsify.install(model, thresholds, sparsify_prefill=False)
    down = model.model.layers[0].mlp.down_proj
    sp = sparsify.registry(model)["layers.0.down"]
    assert down.sparsifier is sp and not down._forward_pre_hooks
    x = torch.randn(1, 1, down.in_features)
    with torch.no_grad():
        expected = F.linear(sparsify.sparsify(x, sp.threshold), down.weight)
        torch.testing.assert_close(down(x), expected, rtol=1e-5, atol=1e-5)
        sparsify.reset_counters(model)  # counting: the sparsifier's own pass runs, and counts
        torch.testing.assert_close(down(x), expected, rtol=1e-5, atol=1e-5)
        assert sp.total == down.in_features and sp.zeros == int((sparsify.sparsify(x, sp.threshold) == 0).sum())
        sparsify.reset_counters(model, counting=False)
        with sparsify.disabled(model):
            torch.testing.assert_close(down(x), F.linear(x, down.weight), rtol=1e-5, atol=1e-5)
        prompt = torch.randn(1, 5, down.in_features)  # a short prompt, on the kernel path: dense (sparsify_prefill off)
        torch.testing.assert_close(down(prompt), F.linear(prompt, down.weight), rtol=1e-5, atol=1e-5)
        sparsify.uninstall(model)
        assert down.sparsifier is None
        torch.testing.assert_close(down(x), F.linear(x, down.weight), rtol=1e-5, atol=1e-5)


def test_a_sparse_model_can_be_copied_and_pickled_after_decoding(samples, tmp_path):
    """The kernel handles (library, buffer addresses) stay behind; the copy decodes with its own buffers."""
    import copy

    model, thresholds = pruned_tiny(samples)
    sparsify.uninstall(model)
    to_sparse_runtime(model)
    sparsify.install(model, thresholds)
    prompt = samples[:1, :8]
    tokens, _, _ = greedy(model, prompt, 6)  # every kernel handle and group product made
    twin = copy.deepcopy(model)
    assert twin.model.layers[0].self_attn.q_proj.sparsifier is sparsify.registry(twin)["layers.0.qkv"]
    assert greedy(twin, prompt, 6)[0] == tokens
    torch.save(model, tmp_path / "model.pt")
    again = torch.load(tmp_path / "model.pt", weights_only=False)
    assert greedy(again, prompt, 6)[0] == tokens


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_the_kernel_threshold_zeroes_what_the_sparsifier_zeroes(samples, dtype):
    """The sparsifier compares in the input's dtype (the threshold rounded to it); the kernel compares in
    float32 and must be given the rounded threshold: the same bits as the sparsifier's own pass, for
    thresholds between two representable values."""
    model, _ = pruned_tiny(samples, dtype)
    lin = DualSparseLinear.from_linear(model.model.layers[0].mlp.down_proj)
    sp = sparsify.ActivationSparsifier("down", 0.0)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(40):
            x = torch.randn(1, 8, lin.in_features, generator=gen).to(dtype)  # 8 rows: the kernel path
            sp.threshold = float(torch.rand(1, generator=gen)) * 1.2
            lin.sparsifier = None
            expected = lin(sparsify.sparsify(x, sp.threshold))
            lin.sparsifier = sp
            assert torch.equal(lin(x), expected), sp.threshold


def test_decode_head_keeps_autograd_and_long_inputs_on_torch(samples, monkeypatch):
    from duogpt.runtime import linear

    model, _ = pruned_tiny(samples)
    to_sparse_runtime(model)
    head = model.get_output_embeddings()
    x = torch.randn(20, head.in_features)
    calls = []
    monkeypatch.setattr(linear, "dense_row", lambda w, v: calls.append(v.shape) or F.linear(v.float(), w.float()))
    with torch.no_grad():
        assert head(x).shape == (20, head.out_features) and calls == []  # a prompt's rows: torch's matmul
        for rows in (1, 3, 16):  # decode rows: the dense kernel
            torch.testing.assert_close(head(x[:rows]), F.linear(x[:rows], head.weight), rtol=1e-5, atol=1e-5)
        assert head(x[None, :1]).shape == (1, 1, head.out_features)
        assert head(x[:4, None]).shape == (4, 1, head.out_features)  # one position of four sequences
        assert head(x[None, :4]).shape == (1, 4, head.out_features)  # a prompt of four positions: torch
    assert calls == [(1, head.in_features), (3, head.in_features), (16, head.in_features), (1, 1, head.in_features),
                     (4, 1, head.in_features)]  # fmt: skip
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(head(x[:3]), F.linear(x[:3], head.weight), rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    head(x[:1]).sum().backward()
    torch.testing.assert_close(x.grad[0], head.weight.detach().sum(0))


def test_packed_shape_mismatch_is_refused(samples, tmp_path):
    model, _ = pruned_tiny(samples)
    packed = {name: packed_form(lin) for name, (_, _, lin) in linears_by_name(model).items()}
    packed["layers.0.mlp.down_proj"] = packed["layers.0.mlp.up_proj"]
    with pytest.raises(UsageError, match="has shape"):
        to_sparse_runtime(tiny_model(), packed)


def test_cli_generate_both_runtimes_same_text(tiny_checkpoint, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", str(tiny_checkpoint), "--calib", str(text_file), "--nsamples", "4", "--seqlen", "32"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    texts = {}
    for runtime in ("dense", "sparse"):
        capsys.readouterr()
        assert main(["generate", str(out), "--prompt", "The jury", "--max-new-tokens", "12", "--runtime", runtime]) == 0
        captured = capsys.readouterr()
        texts[runtime] = captured.out
        assert "tokens/s" in captured.err and f"{runtime} runtime" in captured.err
    assert texts["dense"] == texts["sparse"]
    model, tokenizer, meta = checkpoint.load(out)
    assert meta["sparse_format"]["bytes"] < meta["sparse_format"]["dense_bytes"]
    assert generate(model, tokenizer, "The jury", 4).decode_tokens_per_second > 0


def test_bench_gemv_records():
    from duogpt.runtime import bench_gemv

    result = bench_gemv.gemv(
        shapes=[(130, 70)],
        dtypes=(torch.float32, torch.bfloat16),
        sparsities=[(0.0, 0.0), (0.5, 0.5)],
        repeats=5,
        tile_rows=64,
        progress=lambda _: None,
        batch_rows=(4,),
    )
    assert result["bandwidth_gbps"] > 0 and result["machine"]["caches"]
    assert [(r["p_w"], r["p_x"], r["rows"]) for r in result["records"][:3]] == [(0, 0, 1), (0.5, 0.5, 1), (0.5, 0.5, 4)]
    for rec in result["records"]:
        for key in ("dense_ms", "sparse_ms", "base_ms", "roofline_ms", "speedup", "roofline_speedup", "plan"):
            assert key in rec
        assert rec["max_abs_error"] < 1e-3 * (1 + 70 * (rec["dtype"] == "bfloat16"))
        assert rec["roofline_ms"] == pytest.approx(
            130 * 70 * (4 if rec["dtype"] == "float32" else 2) / result["bandwidth_gbps"] / 1e6
        )
        assert ("own_dense_speedup" in rec) == (rec["rows"] == 1)
    assert "vs roofline" in bench_gemv.gemv_markdown(result)
    assert {v["dtype"] for v in result["variants"]} == {"float32", "bfloat16"}
    assert all(v["ms"] and min(v["ms"].values()) > 0 for v in result["variants"])


@pytest.mark.parametrize("dense_faster", [True, False])
def test_bench_gemv_times_the_path_the_runtime_takes(monkeypatch, dense_faster):
    """A full weight on full inputs is timed on the dense product where the runtime would hold it dense."""
    from duogpt.runtime import bench_gemv
    from duogpt.runtime.kernels import tune

    monkeypatch.setattr(tune, "dense_faster", lambda *a: dense_faster)
    result = bench_gemv.gemv(
        shapes=[(130, 70)], dtypes=(torch.bfloat16,), sparsities=[(0.0, 0.0), (0.0, 0.5), (0.5, 0.0)], repeats=5,
        tile_rows=64, progress=lambda _: None, batch_rows=(),
    )  # fmt: skip
    paths = [(r["p_w"], r["p_x"], r["path"], r["plan"] == "dense") for r in result["records"]]
    full = "dense" if dense_faster else "kernel"
    assert paths == [(0, 0, full, dense_faster), (0, 0.5, "kernel", False), (0.5, 0, "kernel", False)]
    for rec in result["records"]:
        assert (rec["sparse_ms"] == rec["kernel_ms"]) == (rec["path"] == "kernel")
        assert rec["max_abs_error"] < 1e-3 * 71


def test_bench_decode_on_a_small_random_stack():
    result = bench.decode(
        None,
        layers=1,
        dtype=torch.float32,
        new_tokens=4,
        rounds=1,
        progress=lambda _: None,
        hidden=64,
        ffn=128,
        heads=4,
        vocab=256,
    )
    (rec,) = result["records"]
    assert rec["dense_tok_s"] > 0 and rec["sparse_tok_s"] > 0 and rec["same_greedy_tokens"]
    assert rec["roofline_tok_s"] == pytest.approx(result["bandwidth_gbps"] * 1e9 / rec["dense_bytes_per_token"])
    assert "dense roofline tok/s" in bench.decode_markdown(result)


def test_bench_deploy_on_a_tiny_checkpoint(tiny_checkpoint, text_file, tmp_path):
    from duogpt.runtime import bench_deploy

    out = tmp_path / "pruned"
    args = ["prune", str(tiny_checkpoint), "--calib", str(text_file), "--nsamples", "4", "--seqlen", "32"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    result = bench_deploy.deploy(str(out), prompt_tokens=24, new_tokens=4, rounds=1, progress=lambda _: None)
    assert set(result["memory"]) == set(result["speed"]) == {"sparse", "masked_dense", "source"}
    assert all(m["resident_mb"] > 0 and m["peak_mb"] > 0 for m in result["memory"].values())
    assert all(s["prefill_seconds"] > 0 and s["decode_tok_s"] > 0 for s in result["speed"].values())
    assert 0 < result["size"]["ratio"] < 1
    assert "decode tok/s" in bench_deploy.deploy_markdown(result)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_plan_retiles_at_load_and_checkpoints_keep_the_stored_layout(monkeypatch, dtype):
    """A plan's tile height is a run-time layout: same products; checkpoints and GPU moves get the stored one."""
    from duogpt.runtime.format import pack
    from duogpt.runtime.kernels import tune

    monkeypatch.setenv(tune.PLAN_ENV, "2:512")
    gen = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(90, 700, bias=False).to(dtype)
    dense.weight.data[torch.rand(700, 90, generator=gen) < 0.5] = 0
    linear = DualSparseLinear.from_linear(dense)
    stored_rows = choose_tile_rows(700)
    assert (linear.tile_rows, linear.variant) == (512, 2) and linear.stored_tile_rows == stored_rows
    x = torch.randn(1, 90, generator=gen).to(dtype)
    x[:, ::2] = 0
    with torch.no_grad():
        torch.testing.assert_close(linear(x).float(), F.linear(x, dense.weight).float(), rtol=2e-2, atol=2e-2)
    stored, expected = packed_form(linear), pack(dense.weight.data, stored_rows)
    assert stored.tile_rows == stored_rows and torch.equal(stored.values, expected.values)
    assert torch.equal(stored.bitmaps, expected.bitmaps) and torch.equal(stored.offsets, expected.offsets)
    linear.to(dtype)  # staying on the CPU keeps the plan
    assert linear.tile_rows == 512
    linear.to("meta")  # leaving it restores the stored tiles first
    assert (linear.tile_rows, linear.variant) == (stored_rows, 0)
