"""Defaults shared by every configuration: the reference's recipe (paper_reference.md). Other configs start here."""

from ml_collections import ConfigDict, config_dict

from flava_jax.config import FlavaConfig


def model_config(preset: str) -> ConfigDict:
    """Every FlavaConfig field of a preset, so any can be overridden, e.g. --config.model.dtype=bfloat16."""
    fields = FlavaConfig.from_preset(preset).to_dict()
    fields["remat_policy"] = config_dict.placeholder(str)  # None, but overridable with a policy name
    return ConfigDict(fields)


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 5501650  # the reference's seed_everything value
    config.model = model_config("full")
    config.total_steps = 450_000  # the reference's cosine horizon; its runs stopped at 5K-50K steps
    config.checkpoint_every_steps = 1000
    config.log_every_steps = 50
    config.compilation_cache_dir = "~/.cache/flava_jax/xla"  # persistent XLA cache; "" turns it off
    config.data = ConfigDict(dict(
        sample_dir=config_dict.placeholder(str),  # None: the sample bundled with the package
        text_max_length=512,  # text-only batches (the reference pads them to this length)
        pair_max_length=77,  # image-text batches
        mlm_probability=0.4,
        mask_patches=75,  # BEiT block masking: 75 of 196 patches, blocks of >= 16, aspect in [0.3, 1/0.3]
        mask_min_block=16,
        mask_min_aspect=0.3,
        itm_negative_probability=0.1,
    ))
    return config
