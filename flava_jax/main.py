"""Entry point: `python -m flava_jax.main --config=configs/<name>.py --workdir=DIR [--config.key=value ...]`.

Until the trainer lands, this runs one forward pass of the configured model on the bundled sample: the three
batch types of the study (text only, image only, image-text pairs) with their masking, every objective's loss,
and the image-text similarity matrix, written to DIR/sample_forward.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from flava_jax.config import ConfigError, FlavaConfig
from flava_jax.data import masking, transforms
from flava_jax.data.sample import load_sample
from flava_jax.data.tokenizer import Tokenizer
from flava_jax.model import FlavaForPreTraining

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/debug.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's outputs.")


def model_config(config: ConfigDict) -> FlavaConfig:
    """The FlavaConfig of `config.model`; an invalid value exits with the config key that holds it."""
    try:
        return FlavaConfig(**config.model.to_dict())
    except ConfigError as e:
        raise app.UsageError(str(e).replace("FlavaConfig.", "config.model.", 1)) from e


def sample_batches(config: ConfigDict, model: FlavaConfig, tokenizer: Tokenizer,
                   rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """The bundled sample as the study's three batch types, masked as the reference masks them."""
    pairs = load_sample(config.data.sample_dir)
    images, captions = [p[0] for p in pairs], [p[1] for p in pairs]
    image = model.image_config
    pixels = np.stack([transforms.encoder_pixels(im, image.image_size) for im in images])
    codebook = np.stack([transforms.codebook_pixels(im, model.codebook_image_size) for im in images])
    blocks = masking.BlockMasking(image.grid_size, config.data.mask_patches, config.data.mask_min_block,
                                  config.data.mask_min_aspect)

    def text(max_length: int, texts: list[str]) -> dict[str, np.ndarray]:
        ids, attention = tokenizer.encode_batch(texts, max_length)
        masked, labels = masking.mask_tokens(ids, rng, config.data.mlm_probability, tokenizer.vocab_size)
        return dict(input_ids=ids, input_ids_masked=masked, attention_mask=attention, mlm_labels=labels)

    def image_inputs() -> dict[str, np.ndarray]:
        return dict(pixel_values=pixels, codebook_pixel_values=codebook,
                    bool_masked_pos=np.stack([blocks(rng) for _ in images]))

    # One ITM negative: the first image is paired with the last caption.
    pair_texts = [captions[-1]] + captions[1:]
    itm_labels = np.array([int(t == c) for t, c in zip(pair_texts, captions, strict=True)])
    return {
        "text": text(config.data.text_max_length, captions),
        "image": image_inputs(),
        "pairs": {**text(config.data.pair_max_length, pair_texts), **image_inputs(), "itm_labels": itm_labels},
    }


def sample_forward(config: ConfigDict, workdir: Path) -> dict[str, Any]:
    """Initialise the model and run its forward pass on each sample batch; returns (and writes) the results."""
    model_cfg = model_config(config)
    rng = np.random.default_rng(config.seed)
    captions = [caption for _, caption in load_sample(config.data.sample_dir)]
    tokenizer = Tokenizer.train(captions, vocab_size=model_cfg.text_config.vocab_size)
    tokenizer.save(workdir / "tokenizer.model")
    batches = sample_batches(config, model_cfg, tokenizer, rng)

    start = time.perf_counter()
    model = FlavaForPreTraining(model_cfg)
    params = model.init_params(jax.random.key(config.seed))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    logging.info("initialised %s parameters in %.1f s", f"{n_params:,}", time.perf_counter() - start)

    forward = jax.jit(lambda p, batch: model.apply({"params": p}, **batch))
    results: dict[str, Any] = {"parameters": int(n_params), "tokenizer_vocab_size": tokenizer.vocab_size}
    for name, batch in batches.items():
        out = forward(params, {k: jnp.asarray(v) for k, v in batch.items()})
        losses = {k: float(v) for k, v in out.loss_info.items()}
        results[name] = {"loss": float(out.loss), "losses": losses}
        print(f"{name:>6} batch {tuple(next(iter(batch.values())).shape)}: "
              + ", ".join(f"{k}={v:.4f}" for k, v in losses.items()))
        if out.contrastive_logits_per_text is not None:
            results[name]["text_image_similarity"] = np.asarray(out.contrastive_logits_per_text).round(4).tolist()
    (workdir / "sample_forward.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {workdir / 'sample_forward.json'}")
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("both --config and --workdir are required")
    workdir = Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    if _CONFIG.value.compilation_cache_dir:
        # XLA compiles (random init especially) take tens of seconds on a CPU; later runs reuse them.
        jax.config.update("jax_compilation_cache_dir", str(Path(_CONFIG.value.compilation_cache_dir).expanduser()))
    sample_forward(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
