"""A tiny FLAVA on the sample bundled in the package: runs on a laptop CPU in minutes, with no downloads."""

from configs import base
from flava_jax.data.sample import SAMPLE_DIR


def get_config():
    config = base.get_config()
    config.model = base.model_config("tiny")
    config.total_steps = 60
    config.checkpoint_every_steps = 20
    config.log_every_steps = 1
    config.train.batch_size = 16
    config.train.micro_batch_size = 8
    config.optim.warmup_steps = 5
    config.optim.decay_steps = 60
    config.eval.every_steps = 20
    config.eval.evaluators.validation.batch_size = 4
    config.eval.evaluators.validation.batches = 1
    config.eval.evaluators.blimp.limit = 2  # pairs per paradigm, when eval.evaluators.blimp.dir is set
    data = config.data
    data.sources = [str(SAMPLE_DIR / "wit")]
    data.image_dirs = [str(SAMPLE_DIR / "images")]
    data.download = False
    data.text_words = data.images = -1  # all of the sample
    data.tokenizer = "sentencepiece"  # a 512-piece vocabulary fit to the sample keeps the tiny model tiny
    data.heldout_fraction = 0.25  # a few held-out texts from so small a sample
    data.image_size = 64
    data.chunk_records = 64
    data.text_max_length = 64
    data.pair_max_length = 32
    # The tiny model sees 4x4 patches: keep the reference's 38% masked, with blocks scaled down.
    data.mask_patches = 6
    data.mask_min_block = 2
    data.workers = 0
    return config
