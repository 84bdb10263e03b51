"""Architecture names, presets and config validation."""

from __future__ import annotations

import json

import pytest

from models.config import (
    VARIANTS,
    ConfigError,
    ModelConfig,
    canonical_arch,
    expand_arch_names,
    resolve_config,
)


@pytest.mark.parametrize(
    "typed, expected",
    [
        ("baseline", "SM+LN+G"),
        ("sm-ln-g", "SM+LN+G"),
        ("SM+LN+R", "SM+LN+R"),
        ("sm_ln_r", "SM+LN+R"),
        ("aero", "EReg(SM(t)+ScFuFFN)"),
        ("ereg-sm-t-scfuffn", "EReg(SM(t)+ScFuFFN)"),
        ("sm(t)+scfuffn", "SM(t)+ScFuFFN"),
        ("SM-ScFuFFN-prune", "SM+ScFuFFN+Prune"),
        ("sm", "SM"),
    ],
)
def test_names_are_case_and_separator_insensitive(typed, expected):
    assert canonical_arch(typed) == expected


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown architecture 'gpt5'"):
        canonical_arch("gpt5")


def test_all_expands_to_every_variant():
    assert expand_arch_names(["all"]) == list(VARIANTS)
    assert expand_arch_names(["baseline", "aero"]) == ["SM+LN+G", "EReg(SM(t)+ScFuFFN)"]


@pytest.mark.parametrize("arch", list(VARIANTS))
@pytest.mark.parametrize("preset", ["tiny", "small", "gpt2"])
def test_every_variant_resolves_and_round_trips_json(arch, preset):
    cfg = resolve_config(arch, preset)
    assert cfg.arch == arch
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_gpt2_preset_is_gpt2_small_at_t128():
    cfg = resolve_config("baseline", "gpt2")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 12, 768, 128)
    assert (cfg.norm, cfg.ffn_act, cfg.ffn_form) == ("layernorm", "gelu", "standard")


def test_pruned_variant_prunes_half_the_depth_by_default():
    assert resolve_config("sm+scfuffn+prune", "gpt2").pruned_ffn_layers == 6
    assert resolve_config("sm+scfuffn+prune", "gpt2", n_layer=18).pruned_ffn_layers == 9
    assert resolve_config("sm+scfuffn+prune", "gpt2", pruned_ffn_layers=4).pruned_ffn_layers == 4


def test_aero_is_softmax_only_with_every_aero_part():
    cfg = resolve_config("aero", "small")
    assert cfg.norm == "none" and cfg.ffn_act == "identity" and cfg.ffn_form == "fused"
    assert cfg.ffn_scaled and cfg.attn_temperature and cfg.entropy_reg
    assert (cfg.entropy_gamma, cfg.entropy_lambda, cfg.entropy_reduction) == (0.2, 1e-5, "sum")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"norm": "rmsnorm"}, "norm="),
        ({"ffn_form": "fused", "ffn_act": "gelu"}, "fused FFN has no activation"),
        ({"n_embd": 30, "n_head": 4}, "not divisible"),
        ({"pruned_ffn_layers": 3, "n_layer": 2}, "pruned_ffn_layers"),
        ({"vocab_size": 0}, "vocab_size must be positive"),
    ],
)
def test_invalid_configs_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("baseline", "huge")
    with pytest.raises(ConfigError, match="unknown config fields"):
        ModelConfig.from_dict({"n_layers": 3})
