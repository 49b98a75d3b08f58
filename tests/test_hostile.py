"""Hostile inputs, fuzzed (hypothesis) and hand-made: each gets one line, exit status 2, no traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_model
from duogpt.cli import build_parser, main
from duogpt.errors import UsageError
from duogpt.runtime.format import SparseLinear, pack, spmspv_reference, validate
from duogpt.runtime.kernels.cpu import CpuSpMSpV

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FUZZ_SLOW = settings(FUZZ, max_examples=15)  # each example loads a model


def _one_line_exit_2(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- command line


NUMERIC = ["--weight-sparsity", "--act-sparsity", "--nsamples", "--seqlen", "--alpha", "--ridge", "--percdamp"]


@FUZZ
@given(
    option=st.sampled_from(NUMERIC), value=st.one_of(st.text(max_size=12), st.floats().map(str), st.integers().map(str))
)
def test_prune_numeric_options_parse_or_fail_in_one_line(option, value, capsys):
    try:
        args = build_parser().parse_args(["prune", "--out", "x", option, value])
    except SystemExit as stop:
        err = capsys.readouterr().err
        assert stop.code == 2 and err.count("\n") == 1 and err.startswith("duogpt prune: error: "), err
        return
    parsed = getattr(args, option.lstrip("-").replace("-", "_"))
    if option in ("--weight-sparsity", "--act-sparsity"):
        assert 0 <= parsed < 1
    elif option in ("--nsamples", "--seqlen"):
        assert parsed >= 1
    else:
        assert parsed >= 0


@FUZZ
@given(argv=st.lists(st.sampled_from(["prune", "eval", "sweep", "--out", "--method", "nope", "-1", "--tasks", "x"])))
def test_random_argument_lists_never_raise(argv, capsys):
    try:
        build_parser().parse_args(argv)
    except SystemExit as stop:
        assert stop.code in (0, 2)
        assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, tiny_checkpoint, text_file):
    out = tmp_path_factory.mktemp("pruned") / "ckpt"
    args = ["prune", str(tiny_checkpoint), "--calib", str(text_file), "--nsamples", "2", "--seqlen", "16"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    return out


def _copy(pruned_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(pruned_dir, dst)
    return dst


def _eval(d, text_file):
    return ["eval", str(d), "--text", str(text_file), "--seqlen", "16", "--max-windows", "1", "--quiet"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@FUZZ_SLOW
@given(key=st.sampled_from(["format", "config", "thresholds", "sparse_format", "format_version"]), value=JSON_VALUES)
def test_duogpt_json_with_wrong_types_is_refused_in_one_line(pruned_dir, text_file, tmp_path_factory, key, value):
    d = _copy(pruned_dir, tmp_path_factory.mktemp("j"))
    meta = json.loads((d / "duogpt.json").read_text())
    meta[key] = value
    (d / "duogpt.json").write_text(json.dumps(meta))
    code = main(_eval(d, text_file))
    assert code in (0, 2)  # some values are harmless (e.g. a new sparse_format note); none may crash


def _with_threshold(text: str, value) -> str:
    meta = json.loads(text)
    meta["thresholds"]["layers.0.qkv"] = value
    return json.dumps(meta)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t[: len(t) // 2], "not valid JSON"),
        (lambda t: "[]", "not a duogpt metadata file"),
        (
            lambda t: t.replace('"thresholds": {', '"thresholds": {"layers.99.qkv": 0.1, ', 1),
            "does not match the model",
        ),
        (lambda t: _with_threshold(t, -1), "not a finite number"),
        (lambda t: _with_threshold(t, "high"), "not a finite number"),
        (lambda t: _with_threshold(t, float("nan")), "not a finite number"),
        (lambda t: t.replace('"config": {', '"config": 5, "old": {', 1), "no valid 'config'"),
    ],
)
def test_damaged_duogpt_json(pruned_dir, text_file, tmp_path, capsys, damage, message):
    d = _copy(pruned_dir, tmp_path)
    (d / "duogpt.json").write_text(damage((d / "duogpt.json").read_text()))
    assert message in _one_line_exit_2(capsys, _eval(d, text_file))


def test_unknown_keys_in_duogpt_json_are_ignored(pruned_dir, text_file, tmp_path):
    d = _copy(pruned_dir, tmp_path)
    meta = json.loads((d / "duogpt.json").read_text())
    meta["from_the_future"] = {"x": 1}
    (d / "duogpt.json").write_text(json.dumps(meta))
    assert main(_eval(d, text_file)) == 0


@pytest.mark.parametrize("name", ["duogpt-00001.safetensors", "duogpt-00003.safetensors"])  # a block, the rest
@pytest.mark.parametrize("keep", [0, 7, 1000])
@pytest.mark.parametrize("command", ["eval", "generate"])
def test_truncated_safetensors(pruned_dir, text_file, tmp_path, capsys, name, keep, command):
    d = _copy(pruned_dir, tmp_path)
    (d / name).write_bytes((d / name).read_bytes()[:keep])
    argv = ["generate", str(d), "--prompt", "The", "--max-new-tokens", "2"]
    assert "truncated or damaged" in _one_line_exit_2(capsys, argv if command == "generate" else _eval(d, text_file))


def test_weights_of_another_shape(pruned_dir, text_file, tmp_path, capsys):
    from conftest import tiny_llama_config

    d = _copy(pruned_dir, tmp_path)
    tiny_model(tiny_llama_config(hidden_size=32, num_attention_heads=2, num_key_value_heads=1)).save_pretrained(
        tmp_path / "other"
    )
    shutil.copy(tmp_path / "other" / "model.safetensors", d / "duogpt-00003.safetensors")  # the non-block tensors
    assert "does not match its config" in _one_line_exit_2(capsys, _eval(d, text_file))


# --------------------------------------------------------------------------- sparse format


def _packed(seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(130, 40, generator=gen)
    W[torch.rand(130, 40, generator=gen) < 0.5] = 0
    return pack(W, tile_rows=64)


@FUZZ
@given(
    array=st.sampled_from(["bitmaps", "offsets", "values"]),
    index=st.integers(min_value=0, max_value=10_000),
    value=st.integers(min_value=-(2**62), max_value=2**62),
    truncate=st.booleans(),
)
def test_corrupted_sparse_arrays_are_caught_before_any_kernel_reads_them(array, index, value, truncate):
    sp = _packed()
    arrays = {"bitmaps": sp.bitmaps.clone(), "offsets": sp.offsets.clone(), "values": sp.values.clone()}
    t = arrays[array]
    if truncate:
        arrays[array] = t.flatten()[: index % t.numel()].clone() if array == "values" else t[..., :-1].clone()
    else:
        flat = t.view(-1)
        i = index % flat.numel()
        flat[i] = value if array != "bitmaps" else (value & (2**63 - 1))
    bad = SparseLinear(arrays["bitmaps"], arrays["values"], arrays["offsets"], sp.shape, sp.tile_rows)
    x = torch.randn(sp.shape[1])
    try:
        validate(bad)
    except UsageError:
        return
    # it passed validation: then it is a consistent matrix, and the kernel must agree with the reference
    torch.testing.assert_close(CpuSpMSpV(bad)(x), spmspv_reference(bad, x), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "shape, tile_rows", [((0, 4), 64), ((4, -1), 64), ((130, 40), 0), ((130, 40), 96), ((130, 40), -64)]
)
def test_bad_sparse_shapes(shape, tile_rows):
    sp = _packed()
    with pytest.raises(UsageError):
        validate(SparseLinear(sp.bitmaps, sp.values, sp.offsets, shape, tile_rows))


def test_wrong_sparse_dtypes():
    sp = _packed()
    with pytest.raises(UsageError, match="uint64"):
        validate(SparseLinear(sp.bitmaps, sp.values, sp.offsets.int(), sp.shape, sp.tile_rows))


# --------------------------------------------------------------------------- text files


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "fewer than one"),
        (bytes(range(256)) * 4, "not UTF-8"),
        ("text in UTF-16 ".encode("utf-16") * 50, "not UTF-8"),
        ("caf\xe9 cr\xe8me ".encode("latin-1") * 50, "not UTF-8"),
        (b"ok", "fewer than one"),
    ],
)
def test_bad_text_files(tiny_checkpoint, tmp_path, capsys, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    argv = ["eval", str(tiny_checkpoint), "--text", str(path), "--seqlen", "16", "--quiet"]
    assert message in _one_line_exit_2(capsys, argv)


@FUZZ_SLOW
@given(blob=st.binary(max_size=300))
def test_any_bytes_as_text_never_crash(blob, tiny_checkpoint, tmp_path_factory, capsys):
    path = tmp_path_factory.mktemp("b") / "t.txt"
    path.write_bytes(blob)
    code = main(["eval", str(tiny_checkpoint), "--text", str(path), "--seqlen", "8", "--max-windows", "1", "--quiet"])
    assert code in (0, 2)
    assert "Traceback" not in capsys.readouterr().err


def test_jsonl_without_text_field(tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    argv = ["eval", str(tiny_checkpoint), "--text", str(path), "--seqlen", "16", "--quiet"]
    assert "has no string field 'text'" in _one_line_exit_2(capsys, argv)
