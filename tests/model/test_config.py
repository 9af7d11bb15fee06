"""FlavaConfig: HF dict conversion both ways, the presets against the paper's own construction, and validation."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from flava_jax import ConfigError, FlavaConfig
from tests.hf_reference import transformers


def test_full_preset_is_the_hf_default() -> None:
    assert FlavaConfig.from_hf_dict(transformers.FlavaConfig().to_dict()) == FlavaConfig.from_preset("full")
    assert FlavaConfig.from_preset("full") == FlavaConfig()


def test_half_preset_is_the_papers_construction() -> None:
    """docs/reference.md#model-sizes: the thesis runs' FlavaConfig, as the reference code builds it."""
    paper = transformers.FlavaConfig(hidden_size=516, projection_dim=516,
                                     text_config={"hidden_size": 516, "num_hidden_layers": 6},
                                     image_config={"hidden_size": 516, "num_hidden_layers": 6},
                                     multimodal_config={"hidden_size": 516})
    half = FlavaConfig.from_hf_dict(paper.to_dict())
    assert half == FlavaConfig.from_preset("half")
    assert half.text_config.intermediate_size == 3072 and half.text_config.head_dim == 43
    assert half.multimodal_config.num_hidden_layers == 6


@pytest.mark.parametrize("config", [
    FlavaConfig.from_preset("tiny"),
    FlavaConfig.from_preset("half"),
    FlavaConfig.from_preset("tiny", mlm_weight=0.5, logit_scale_init_value=1.0, init_codebook=False,
                            text_config=dict(hidden_act="gelu_new", layer_norm_eps=1e-6, qkv_bias=False),
                            image_config=dict(mask_token=False, hidden_dropout_prob=0.1),
                            image_codebook_config=dict(num_blocks_per_group=3)),
])
def test_round_trip_through_transformers(config: FlavaConfig) -> None:
    hf = transformers.FlavaConfig(**config.to_hf_dict())
    assert hf.text_config.hidden_act == config.text_config.hidden_act
    assert FlavaConfig.from_hf_dict(hf.to_dict()) == config


def test_runtime_switches_stay_out_of_hf_dicts() -> None:
    config = FlavaConfig.from_preset("tiny", dtype="bfloat16", scan_layers=True, remat_policy="nothing_saveable",
                                     multimodal_attention_mask=True)
    hf = config.to_hf_dict()
    assert not {"dtype", "scan_layers", "remat_policy", "multimodal_attention_mask"} & set(hf)
    assert FlavaConfig.from_hf_dict(hf, dtype="bfloat16", scan_layers=True, remat_policy="nothing_saveable",
                                    multimodal_attention_mask=True) == config


def test_legacy_sub_config_dicts_override() -> None:
    """Old FLAVA config.json files carry `text_config_dict`, which HF lets override `text_config`."""
    hf = FlavaConfig.from_preset("tiny").to_hf_dict()
    hf["text_config_dict"] = {"num_hidden_layers": 3}
    assert FlavaConfig.from_hf_dict(hf).text_config.num_hidden_layers == 3


def test_unknown_hf_keys_are_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    hf = FlavaConfig.from_preset("tiny").to_hf_dict()
    hf["some_future_flag"] = 1
    hf["text_config"]["another_flag"] = 2
    with caplog.at_level(logging.WARNING):
        assert FlavaConfig.from_hf_dict(hf) == FlavaConfig.from_preset("tiny")
    assert "some_future_flag" in caplog.text and "text_config.another_flag" in caplog.text
    with pytest.raises(ConfigError, match="model_type='bert'"):
        FlavaConfig.from_hf_dict({**hf, "model_type": "bert"})


@pytest.mark.parametrize("changes, key", [
    (dict(text_config=dict(hidden_size=30)), "text_config.hidden_size"),  # 30 % 4 heads
    (dict(image_config=dict(hidden_act="mish")), "image_config.hidden_act"),
    (dict(multimodal_config=dict(hidden_size=64, num_attention_heads=4)), "hidden_size"),  # widths disagree
    (dict(image_codebook_config=dict(vocab_size=10)), "image_codebook_config.vocab_size"),
    (dict(image_config=dict(image_size=30)), "image_config.image_size"),  # not a multiple of the patch
    (dict(text_config=dict(pad_token_id=600)), "text_config.pad_token_id"),
    (dict(text_config=dict(hidden_dropout_prob=1.5)), "text_config.hidden_dropout_prob"),
    (dict(itm_weight=-1.0), "itm_weight"),
    (dict(dtype="int8"), "dtype"),
    (dict(remat_policy="everything"), "remat_policy"),
    (dict(image_codebook_config=dict(freeze=False)), "image_codebook_config.freeze"),
])
def test_invalid_values_name_their_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"FlavaConfig\.{key}:"):
        FlavaConfig.from_preset("tiny", **changes)


def test_unknown_keys_and_presets_fail() -> None:
    with pytest.raises(ConfigError, match="unknown keys"):
        FlavaConfig.from_preset("tiny", hiden_size=3)
    with pytest.raises(ConfigError, match="unknown key 'layers'"):
        FlavaConfig.from_preset("tiny", text_config=dict(layers=3))
    with pytest.raises(ConfigError, match="preset 'huge'"):
        FlavaConfig.from_preset("huge")


def test_config_is_hashable_and_frozen() -> None:
    config = FlavaConfig.from_preset("tiny")
    assert hash(config) == hash(FlavaConfig.from_preset("tiny"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 3  # type: ignore[misc]
