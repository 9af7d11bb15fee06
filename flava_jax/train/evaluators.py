"""Evaluation during training: per-objective validation losses on held-out data, pseudo-perplexity on held-out
text (the reference's sentence-averaged variant and the token-weighted one), and BLiMP accuracy on a subset.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from flava_jax.common.blimp import blimp_accuracy, read_blimp
from flava_jax.common.pll import LN2, pseudo_perplexity
from flava_jax.data import pipeline, records
from flava_jax.data.prepare import read_stream
from flava_jax.data.tokenizer import Tokenizer
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.train import sharding as sharding_lib
from flava_jax.train.pll_scorer import PLLScorer
from flava_jax.train.step import make_eval_step

log = logging.getLogger("flava_jax")


class TrainingEvaluator:
    """Callable on parameters; returns {"val/<objective>": loss, "pppl": ..., "blimp/accuracy": ...}."""

    def __init__(self, config: ConfigDict, model: FlavaForPreTraining, tokenizer: Tokenizer, data_dir: Path,
                 mesh: jax.sharding.Mesh, streams: list[str]) -> None:
        e, data = config.eval, config.data
        self.mesh = mesh
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        settings = pipeline.PipelineSettings.from_config(config, str(data_dir))
        image_capacity = data.mask_patches
        eval_step = make_eval_step(model, data.mlm_probability, image_capacity)
        self.eval_step = jax.jit(sharding_lib.shard_activations(eval_step, mesh, config.sharding.activation_rules),
                                 out_shardings=sharding_lib.replicated(mesh))
        self.batches: dict[str, list[dict[str, np.ndarray]]] = {}
        for stream in streams:
            available = len(pipeline.source(data_dir, pipeline.VALIDATION_KEYS[stream])) \
                if pipeline.manifest(data_dir)["shards"].get(pipeline.VALIDATION_KEYS[stream]) else 0
            size = min(e.val_batch_size, available) // shards * shards
            if size == 0:
                log.warning("too few held-out %s examples (%d) for a validation batch over %d shards: no validation "
                            "loss for it", stream, available, shards)
                continue
            dataset = pipeline.stream_dataset(settings, stream, size // jax.process_count(), tokenizer, train=False)
            self.batches[stream] = [dataset[i] for i in range(min(e.val_batches, len(dataset)))]
        texts = [records.decode_text(r) for r in read_stream(data_dir, "heldout")][: e.pppl_texts]
        self.pppl_texts = [tokenizer.encode(t, e.pppl_max_length) for t in texts]
        self.blimp_pairs: list[Any] = []
        if e.blimp_dir and Path(e.blimp_dir).is_dir():
            pairs, problems = read_blimp(e.blimp_dir, limit=e.blimp_limit, paradigms=list(e.blimp_paradigms) or None)
            for problem in problems:
                log.warning("BLiMP: %s", problem)
            self.blimp_pairs = pairs
            self.blimp_tokens = [(tokenizer.encode(p.good, 512), tokenizer.encode(p.bad, 512)) for p in pairs]
        elif e.blimp_dir:
            log.warning("eval.blimp_dir %s does not exist: no BLiMP during training", e.blimp_dir)
        batch = max(e.pll_batch_size // shards, 1) * shards
        self.scorer = PLLScorer(model, batch_size=batch, sharding=sharding_lib.batch_sharding(mesh))

    def __call__(self, params: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        sums: dict[str, list[float]] = collections.defaultdict(list)
        batch_sharding = sharding_lib.batch_sharding(self.mesh)
        for stream, batches in self.batches.items():
            for batch in batches:
                out = self.eval_step(params, {stream: sharding_lib.global_batch(batch, batch_sharding)})
                for key, value in out.items():
                    if key.startswith("loss/"):
                        sums[f"val/{key[5:]}"].append(float(value))
        metrics.update({k: float(np.mean(v)) for k, v in sums.items()})
        if self.pppl_texts:
            metrics.update(pseudo_perplexity(self.scorer.token_logprobs(params, self.pppl_texts)))
        if self.blimp_pairs:
            flat = [ids for pair in self.blimp_tokens for ids in pair]
            scores = self.scorer.token_logprobs(params, flat)
            good = [s / LN2 for s in scores[0::2]]
            bad = [s / LN2 for s in scores[1::2]]
            metrics.update(blimp_accuracy(self.blimp_pairs, good, bad))
        return metrics
