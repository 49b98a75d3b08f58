"""The per-CPU kernel plan: candidates, the random weights it times on, measuring, caching, overrides."""

from __future__ import annotations

import json

import pytest
import torch

from duogpt.errors import UsageError
from duogpt.runtime.format import unpack, validate
from duogpt.runtime.kernels import cpu, tune


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    path = tmp_path / "tune.json"
    monkeypatch.setattr(tune, "_cache_path", lambda: str(path))
    monkeypatch.setenv(tune.PLAN_ENV, "auto")
    tune._plan_cached.cache_clear()
    tune._dense_cached.cache_clear()
    yield path
    tune._plan_cached.cache_clear()
    tune._dense_cached.cache_clear()


@pytest.mark.parametrize("eighths", [1, 3, 4, 7, 8])
def test_random_words_have_the_asked_density(eighths):
    words = tune.random_words((200, 100), eighths / 8, torch.Generator().manual_seed(0))
    bits = ((words[..., None] >> torch.arange(64)) & 1).float().mean().item()
    assert abs(bits - eighths / 8) < 0.01


def test_random_packed_is_valid_and_has_no_rows_past_the_matrix():
    sp = tune.random_packed(100, 30, torch.bfloat16, 0.5)
    validate(sp)
    dense = unpack(sp)
    assert dense.shape == (100, 30) and 0.4 < (dense != 0).float().mean() < 0.6


def test_candidates_cover_the_default_and_fit_the_shape():
    plans = tune.candidates(4096, torch.bfloat16, 2, 256)
    assert plans[0] == tune.Plan(0, 256)
    assert all(p.tile_rows % 64 == 0 and p.tile_rows <= 4096 for p in plans)
    small = tune.candidates(64, torch.float16, 2, 64)  # float16: the original path and, with AVX2, its kernels
    avx2 = [tune.Plan(4, 64), tune.Plan(4 | 32, 64)] if 4 in cpu.variants_available()[0] else []
    assert small == [tune.Plan(0, 64), *avx2]


def test_plan_is_measured_once_and_cached(fresh_cache):
    first = tune.plan(300, 64, torch.bfloat16, 0.5, 128, threads=2)
    entry = next(iter(json.loads(fresh_cache.read_text()).values()))
    assert (entry["variant"], entry["tile_rows"]) == (first.variant, first.tile_rows)
    one_row = tune.Plan(first.variant & ~cpu.BATCH_FLAGS, first.tile_rows, first.align)
    assert min(entry["ms"].values()) == pytest.approx(entry["ms"][str(one_row)])  # timed for one row, then batches
    assert ("batch_ms" in entry) == (4 in cpu.variants_available()[0]) == (first != one_row)
    tune._plan_cached.cache_clear()
    entry["variant"], entry["tile_rows"], entry["align"] = 0, 64, 0  # a cached answer is read, not measured again
    fresh_cache.write_text(json.dumps({next(iter(json.loads(fresh_cache.read_text()))): entry}))
    assert tune.plan(300, 64, torch.bfloat16, 0.5, 128, threads=2) == tune.Plan(0, 64)


def test_forced_and_disabled_plans(monkeypatch, fresh_cache):
    monkeypatch.setenv(tune.PLAN_ENV, "2:1024")
    assert tune.plan(4096, 64, torch.float32, 0.5, 256) == tune.Plan(2, 1024)
    monkeypatch.setenv(tune.PLAN_ENV, "off")
    assert tune.plan(4096, 64, torch.float32, 0.5, 256) == tune.Plan(0, 256)
    monkeypatch.setenv(tune.PLAN_ENV, "fast")
    with pytest.raises(UsageError, match="auto, off or VARIANT:TILE_ROWS"):
        tune.plan(4096, 64, torch.float32, 0.5, 256)
    assert not fresh_cache.exists()


def test_the_dense_choice_is_measured_once_cached_and_never_forced(monkeypatch, fresh_cache):
    """A full weight on unsparsified inputs: the kernel's plan against the dense product, measured, cached."""
    seen = []

    def fake_measure(n, k, dtype, chosen, threads):
        seen.append((n, k, chosen))
        return (2e-4, 1e-4) if n == 320 else (1e-4, 2e-4)  # dense faster for the first shape only

    monkeypatch.setattr(tune, "measure_dense", fake_measure)
    assert tune.dense_faster(320, 64, torch.bfloat16, 128, threads=2)
    assert not tune.dense_faster(640, 64, torch.bfloat16, 128, threads=2)
    assert tune.dense_faster(320, 64, torch.bfloat16, 128, threads=2) and len(seen) == 2  # remembered
    assert seen[0][2] == tune.plan(320, 64, torch.bfloat16, 1.0, 128, threads=2)  # against the full weight's plan
    cached = {k: v for k, v in json.loads(fresh_cache.read_text()).items() if "|dense|" in k}
    assert sorted(v["dense"] for v in cached.values()) == [False, True]
    tune._dense_cached.cache_clear()
    assert tune.dense_faster(320, 64, torch.bfloat16, 128, threads=2) and len(seen) == 2  # read from the file
    for forced in ("off", "4:64"):
        monkeypatch.setenv(tune.PLAN_ENV, forced)
        assert not tune.dense_faster(320, 64, torch.bfloat16, 128, threads=2)


def test_measure_dense_times_both_sides_on_real_calls(fresh_cache):
    kernel_s, dense_s = tune.measure_dense(96, 80, torch.float32, tune.Plan(0, 64), threads=1)
    assert 0 < kernel_s < 1 and 0 < dense_s < 1


def test_short_calls_are_timed_more_often():
    """A 7B-shaped call (milliseconds) is timed ROUNDS times; a call of tens of microseconds enough times for
    MIN_SECONDS of timing, up to MAX_ROUNDS, so a few noisy calls do not pick its plan."""
    assert tune.rounds_for(5e-3) == tune.ROUNDS
    assert tune.ROUNDS < tune.rounds_for(1e-3) == round(tune.MIN_SECONDS / 1e-3) < tune.MAX_ROUNDS
    assert tune.rounds_for(1e-4) == tune.rounds_for(0.0) == tune.MAX_ROUNDS


def test_measure_times_each_candidate_as_often_as_its_length_needs(monkeypatch):
    calls: list[int] = []

    def fake_time(fn, arrays, x, n):  # every call "takes" 1 ms
        calls.append(n)
        return [1e-3] * n

    monkeypatch.setattr(tune, "_time", fake_time)
    plans = [tune.Plan(0, 64), tune.Plan(0, 128)]
    timed = tune.measure(128, 64, torch.float32, 0.5, plans, threads=1)
    assert timed == {p: 1e-3 for p in plans}
    first = tune.ROUNDS // (2 * tune.PASSES)  # the first pass, then as many as the fastest candidate needs
    per_pass = -(-tune.rounds_for(1e-3) // (2 * tune.PASSES))
    assert first < per_pass
    assert calls == [first] * len(plans) + [per_pass] * ((2 * tune.PASSES - 1) * len(plans))


@pytest.mark.parametrize("wins", [("base", "base"), ("registers", "base"), ("panels", "panels"), ("base", "panels")])
def test_the_batch_path_is_measured_per_range_on_the_plans_layout_and_cached(monkeypatch, fresh_cache, wins):
    """Where the build has AVX2's batch paths, the plan carries the flags of the path measured fastest at 4 rows
    (base, registers, panels) and at 16 (base, panels) on the layout chosen for one row; times cached beside it."""
    if 4 not in cpu.variants_available()[0]:
        pytest.skip("this build has only the base batch path")
    seen = []

    def fake_measure(n, k, dtype, density, plans, threads, rows=0):
        seen.append((rows, plans))
        if not rows:  # one row: the plain plans; the last candidate wins
            return {p: 1e-3 / (i + 1) for i, p in enumerate(plans)}
        names = ["base", *tune.BATCH_ROWS[rows]]
        winner = wins[list(tune.BATCH_ROWS).index(rows)]
        return {p: 1e-3 if name == winner else 2e-3 for name, p in zip(names, plans, strict=True)}

    monkeypatch.setattr(tune, "measure", fake_measure)
    chosen = tune.plan(300, 64, torch.bfloat16, 0.5, 128, threads=2)
    last = seen[0][1][-1]
    flags = cpu.VARIANT_BATCH_BASE
    for rows, winner in zip(tune.BATCH_ROWS, wins, strict=True):
        flags |= tune.BATCH_ROWS[rows].get(winner, 0)
    assert chosen == tune.Plan(last.variant | flags, last.tile_rows, last.align)
    assert [rows for rows, _ in seen] == [0, *tune.BATCH_ROWS]
    for rows, plans in seen[1:]:  # each range: the base path and AVX2's, on the one-row plan's layout
        flagged = [cpu.VARIANT_BATCH_BASE, *tune.BATCH_ROWS[rows].values()]
        assert plans == [tune.Plan(last.variant | f, last.tile_rows, last.align) for f in flagged]
    entry = next(iter(json.loads(fresh_cache.read_text()).values()))
    assert entry["variant"] == chosen.variant and entry["batch_ms"]["16"]["base"] == (1.0 if wins[1] == "base" else 2.0)
    tune._plan_cached.cache_clear()
    assert tune.plan(300, 64, torch.bfloat16, 0.5, 128, threads=2) == chosen and len(seen) == 3  # read back


def test_measure_times_batches_on_real_calls():
    plans = [tune.Plan(cpu.VARIANT_BATCH_BASE, 64), tune.Plan(cpu.VARIANT_FEW_PANELS, 64)]
    timed = tune.measure(96, 80, torch.float32, 0.5, plans, threads=1, rows=4)
    assert set(timed) == set(plans) and all(0 < t < 1 for t in timed.values())
    assert tune._input(80, torch.bfloat16, rows=4).shape == (4, 80) and tune._input(80, torch.float32).shape == (80,)


def test_plans_of_one_layout_share_one_retiled_copy_per_pass(monkeypatch):
    """The batch-path candidates differ only in flags: each pass re-tiles once per layout, not once per plan."""
    retiled = []
    real = cpu.retile
    monkeypatch.setattr(cpu, "retile", lambda sp, rows, align=0: retiled.append((rows, align)) or real(sp, rows, align))
    plans = [tune.Plan(0 | cpu.VARIANT_BATCH_BASE, 64), tune.Plan(0, 128), tune.Plan(0 | cpu.VARIANT_FEW_PANELS, 64)]
    timed = tune.measure(128, 64, torch.float32, 0.5, plans, threads=1, rows=4)
    assert set(timed) == set(plans)
    assert len(retiled) == 2 * (2 * tune.PASSES) and set(retiled) == {(64, 0), (128, 0)}
