"""A tiny FLAVA on the bundled sample: runs on a laptop CPU in minutes, with no downloads."""

from configs import base


def get_config():
    config = base.get_config()
    config.model = base.model_config("tiny")
    config.total_steps = 20
    config.checkpoint_every_steps = 10
    config.log_every_steps = 1
    data = config.data
    data.text_max_length = 64
    data.pair_max_length = 32
    # The tiny model sees 4x4 patches: keep the reference's 38% masked, with blocks scaled down.
    data.mask_patches = 6
    data.mask_min_block = 2
    return config
