"""Configurations are correct when built: TrainConfig refuses unknown choices and out-of-range values, and preset()
takes the head kind and the transformer switch; the augmentation a config asks for."""

from __future__ import annotations

from dataclasses import replace

import pytest

from maskmed_core.model import preset
from maskmed_core.training.trainer import TrainConfig, augmentation_of


@pytest.mark.parametrize("field, value", [
    ("amp", "fp61"), ("schedule", "polly"), ("preset", "large"), ("augmentation", "extreme"), ("head", "linear"),
    ("device", "gpu"), ("epochs", 0), ("batch_size", 0), ("learning_rate", 0.0), ("synthetic_ratio", 1.5),
    ("contrast_prob", -0.1), ("time_limit_minutes", 0.0), ("field_of_view_prob", 1.5),
    ("field_of_view_size", (0.5, 0.4)), ("field_of_view_size", (0.0, 1.0)), ("thick_slice_prob", -0.5),
    ("thick_slice_factor", (0.5, 2.0)), ("thick_slice_factor", (3.0, 2.0)),
])
def test_train_config_refuses_a_bad_option_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(dataset="d", output="o", **{field: value})


def test_train_config_accepts_the_defaults_and_every_choice():
    TrainConfig(dataset="d", output="o")
    for field, allowed in TrainConfig.CHOICES.items():
        for value in allowed:
            TrainConfig(dataset="d", output="o", **{field: value})


def test_preset_builds_the_ablation_variants_complete():
    conv = preset("small", 3, head_kind="conv", transformer_enabled=False)
    assert conv.head.kind == "conv" and not conv.transformer.enabled
    assert preset("small", 3).head.kind == "decoupled" and preset("small", 3).transformer.enabled
    with pytest.raises(ValueError, match="head kind"):
        preset("small", 3, head_kind="linear")


def test_field_of_view_and_thick_slice_options_replace_the_presets_and_keep_the_rest():
    from maskmed_core.training.augmentation import augmentation_preset

    strong = TrainConfig(dataset="d", output="o", augmentation="strong", mirror_axes="")
    assert augmentation_of(strong) == replace(augmentation_preset("strong"), mirror_axes=())
    for share in (0.0, 0.6):
        assert augmentation_of(replace(strong, field_of_view_prob=share)) == replace(
            augmentation_preset("strong"), mirror_axes=(), field_of_view_prob=share)
    assert augmentation_of(replace(strong, field_of_view_size=(0.25, 0.5))) == replace(
        augmentation_preset("strong"), mirror_axes=(), field_of_view_size=(0.25, 0.5))
    assert augmentation_of(replace(strong, thick_slice_prob=0.3, thick_slice_factor=(2.0, 2.5))) == replace(
        augmentation_preset("strong"), mirror_axes=(), thick_slice_prob=0.3, thick_slice_factor=(2.0, 2.5))
