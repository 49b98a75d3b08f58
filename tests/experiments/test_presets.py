"""Preset grids, and structured baselines sized to a dual-sparse setting's estimated speedup."""

from __future__ import annotations

import pytest

from conftest import tiny_llama_config
from duogpt.errors import UsageError
from duogpt.experiments.plots import pareto_front
from duogpt.experiments.presets import PRESETS, get_preset, plan_cells, plan_flap, plan_shortgpt, speedup


def test_every_preset_plans_unique_labels():
    cfg = tiny_llama_config(num_hidden_layers=8, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4)
    for preset in PRESETS.values():
        cells = plan_cells(preset, cfg, 4)
        labels = [c.label for c in cells]
        assert len(labels) == len(set(labels)), preset.name
        assert cells[0].method == "dense"


def test_flap_plan_reaches_the_target_speedup():
    cfg = tiny_llama_config(num_hidden_layers=8, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4)
    target = speedup(cfg, 4, 64, p_w=0.5, p_x=0.5)
    plan = plan_flap(cfg, 4, target, 64)
    reached = speedup(cfg, 4, 64, mlp_keep=1 - plan["mlp_fraction"], kv_keep=1 - plan["kv_group_fraction"])
    assert reached == pytest.approx(target, rel=0.01)
    assert plan["kv_group_fraction"] in (0, 0.25, 0.5, 0.75)


def test_shortgpt_plan_is_the_closest_block_count():
    cfg = tiny_llama_config(num_hidden_layers=8)
    target = speedup(cfg, 4, 64, p_w=0.3, p_x=0.3)
    plan = plan_shortgpt(cfg, 4, target, 64)
    errors = [abs(speedup(cfg, 4, 64, blocks_keep=b) - target) for b in range(1, 9)]
    assert abs(plan["planned_speedup"] - target) == pytest.approx(min(errors))
    assert 0 < plan["remove_blocks"] < 8


def test_unreachable_width_target_is_a_usage_error():
    cfg = tiny_llama_config()
    with pytest.raises(UsageError, match="lower the sparsity"):
        plan_flap(cfg, 4, 100.0, 64)


def test_unknown_preset():
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_pareto_front():
    pts = [(1.0, 10.0), (2.0, 12.0), (2.0, 20.0), (3.0, 11.0), (1.5, 9.0)]
    assert pareto_front(pts, higher_is_better=False) == [(1.5, 9.0), (3.0, 11.0)]
    assert pareto_front(pts, higher_is_better=True) == [(2.0, 20.0), (3.0, 11.0)]


def test_allocation_preset_crosses_settings_with_variants_and_alpha_auto_only_for_duogpt():
    from duogpt.config import PruneConfig, fields

    preset = get_preset("allocation")
    cells = plan_cells(preset, tiny_llama_config(), 4)
    dual = [c for c in cells if c.kind == "dual"]
    assert len(dual) == 3 * (2 + 3) and len({c.label for c in cells}) == len(cells)
    assert {c.settings["variant"] for c in dual if c.method == "sparsegpt"} == {
        "allocation=uniform",
        "allocation=search",
    }
    assert "duogpt-50-50-alpha=auto" not in {c.label for c in dual} and "duogpt-55-55-alpha=auto" in {
        c.label for c in dual
    }
    names = {f.name for f in fields()}
    for c in dual:
        settings = {k: v for k, v in c.settings.items() if k in names}
        PruneConfig(
            method=c.method, weight_sparsity=c.weight_sparsity, act_sparsity=c.act_sparsity, **settings
        ).validate()
