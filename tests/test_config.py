"""PruneConfig is the one source of the prune settings: flags, defaults, validation, the Python API."""

from __future__ import annotations

import dataclasses

import pytest

import duogpt
from duogpt.cli import build_parser
from duogpt.config import PruneConfig, fields
from duogpt.errors import UsageError


def prune_action(dest: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    actions = [a for a in sub.choices["prune"]._actions if a.dest == dest]
    assert actions, f"PruneConfig.{dest} has no duogpt prune flag"
    return actions[0]


@pytest.mark.parametrize("name", [f.name for f in fields()])
def test_every_field_has_a_flag_named_after_it_with_the_same_default(name):
    action = prune_action(name)
    assert "--" + name.replace("_", "-") in action.option_strings
    assert action.default == getattr(PruneConfig(), name)
    assert action.help and "(default: %(default)s)" in action.help


def test_parsed_defaults_are_the_config_defaults():
    args = build_parser().parse_args(["prune", "--out", "x"])
    assert PruneConfig(**{f.name: getattr(args, f.name) for f in fields()}) == PruneConfig()


def test_boolean_fields_have_both_spellings_and_the_old_alias():
    parse = build_parser().parse_args
    assert parse(["prune", "--out", "x"]).sparsify_prefill is True
    assert parse(["prune", "--out", "x", "--no-sparsify-prefill"]).sparsify_prefill is False
    assert parse(["prune", "--out", "x", "--dense-prefill"]).sparsify_prefill is False
    assert parse(["prune", "--out", "x", "--blocksize", "64"]).blocksize == 64  # had no flag before


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"weight_sparsity": 1.0}, r"weight_sparsity 1\.0 is outside \[0, 1\)"),
        ({"act_sparsity": -0.1}, "act_sparsity"),
        ({"nsamples": 0}, "nsamples must be a positive integer"),
        ({"nsamples": "8"}, "nsamples must be a positive integer"),
        ({"blocksize": True}, "blocksize must be a positive integer"),
        ({"alpha": float("nan")}, "alpha must be a finite non-negative number"),
        ({"method": "obs"}, "unknown method 'obs'"),
        ({"pattern": "3:2"}, "pattern '3:2'"),
        ({"correction": "both"}, "unknown correction"),
        ({"hessian": "dense", "method": "sparsegpt"}, "hessian='dense' is not available for sparsegpt"),
        ({"sparsify_prefill": "no"}, "sparsify_prefill must be true or false"),
        ({"blcoksize": 64}, "unknown setting"),
    ],
)
def test_bad_settings_are_refused_in_one_place(overrides, message):
    with pytest.raises(UsageError, match=message):
        PruneConfig().replace(**overrides)


def test_prune_takes_a_config_and_overrides(tiny_checkpoint, text_file):
    cfg = PruneConfig(method="wanda", calib=str(text_file), nsamples=2, seqlen=16, act_sparsity=0.3)
    model = duogpt.prune(str(tiny_checkpoint), cfg, weight_sparsity=0.25, progress=False)
    used = model.duogpt_report.config
    assert used == dataclasses.replace(cfg, weight_sparsity=0.25)
    assert cfg.weight_sparsity == 0.5  # the caller's config is not changed
    with pytest.raises(UsageError, match="unknown setting"):
        duogpt.prune(str(tiny_checkpoint), cfg, weight_sparsitty=0.25)
