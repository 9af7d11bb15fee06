"""Entry point: `python -m flava_jax.main --config=configs/<name>.py --workdir=DIR [--config.key=value ...]`.

Until the trainer lands, this prepares the configured data if needed (the debug config: the sample bundled in
the package) and runs one forward pass of the configured model on one pipeline batch of each stream (text only,
image only, image-text pairs): every objective's loss and the image-text similarity, in DIR/sample_forward.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from flava_jax.config import ConfigError, FlavaConfig
from flava_jax.data import pipeline, prepare
from flava_jax.data.prepare import MANIFEST
from flava_jax.data.transforms import model_inputs
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


def prepared_data(config: ConfigDict, workdir: Path) -> Path:
    """`config.data.dir`, or WORKDIR/data, prepared from `config.data.sources` if it is not there yet."""
    if config.data.dir:
        path = Path(config.data.dir)
        if not (path / MANIFEST).is_file():
            raise app.UsageError(f"{path} holds no prepared data: run python -m flava_jax.data.prepare "
                                 f"--config=... --out={path}")
        return path
    path = workdir / "data"
    if not (path / MANIFEST).is_file():
        if not config.data.sources:
            raise app.UsageError("set config.data.dir to prepared data, or config.data.sources to prepare from")
        prepare.prepare(prepare.PrepareSettings.from_config(config), list(config.data.sources), path)
    return path


def sample_forward(config: ConfigDict, workdir: Path, batch_size: int = 4) -> dict[str, Any]:
    """Initialise the model and run its forward pass on one batch of each stream; returns (and writes) results."""
    model_cfg = model_config(config)
    data_dir = prepared_data(config, workdir)
    batches = next(pipeline.MultitaskIterator(pipeline.PipelineSettings.from_config(config, str(data_dir)),
                                              dict.fromkeys(("text", "image", "pairs"), batch_size)))
    start = time.perf_counter()
    model = FlavaForPreTraining(model_cfg)
    params = model.init_params(jax.random.key(config.seed))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    logging.info("initialised %s parameters in %.1f s", f"{n_params:,}", time.perf_counter() - start)

    sizes = (model_cfg.image_config.image_size, model_cfg.codebook_image_size)
    forward = jax.jit(lambda p, batch: model.apply({"params": p}, **model_inputs(batch, *sizes)))
    results: dict[str, Any] = {"parameters": int(n_params), "data": str(data_dir)}
    for name, batch in batches.items():
        out = forward(params, batch)
        losses = {k: float(v) for k, v in out.loss_info.items()}
        results[name] = {"loss": float(out.loss), "losses": losses}
        print(f"{name:>6} batch: " + ", ".join(f"{k}={v:.4f}" for k, v in losses.items()))
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
