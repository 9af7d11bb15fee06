"""Evaluation during training, as a registry configured as data (the manner of big_vision).

`config.eval.evaluators` maps a name to `dict(type=..., every_steps=..., <the type's options>)`; `build` makes one
evaluator per entry, and the trainer runs each on the parameters at the steps it is due (and at the last step).
`every_steps=None` runs at the shared `config.eval.every_steps`. The types:

* `validation_loss`: each objective's loss on held-out batches, as `val/<objective>` (the scheduler's monitor).
* `pppl`: pseudo-perplexity on held-out text, the reference's per-text mean (`pppl`, which picks the best
  checkpoint) and the token-weighted one.
* `blimp`: BLiMP PLL accuracy on the first `limit` pairs of each paradigm (needs `dir`; skipped without it).
* `zeroshot`: ImageNet-style zero-shot top-1/top-5 (`zeroshot/top1`, `zeroshot/top5`; the paper's "MTR") on the
  labelled images in `dir` (needs it; skipped without it), the first `limit` per class; only in runs with images.
* `retrieval`: image-text recall (`retrieval/i2t_r1` ... `retrieval/t2i_r10`) on the first `limit` held-out pairs
  of the run's prepared data, or of the pairs file `data`, each query's first `itm_rerank` candidates reordered by
  the ITM head (0: none); only in runs with images.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np
from ml_collections import ConfigDict

from flava_jax.common.blimp import blimp_accuracy, read_blimp
from flava_jax.common.pll import LN2, pseudo_perplexity
from flava_jax.common.retrieval import recall_keys
from flava_jax.common.settings import ConfigError
from flava_jax.data import pipeline, records, vision_tasks
from flava_jax.data.prepare import read_stream
from flava_jax.data.tokenizer import AnyTokenizer
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.train import sharding as sharding_lib
from flava_jax.train.feature_scorer import FeatureScorer
from flava_jax.train.pll_scorer import PLLScorer
from flava_jax.train.step import make_eval_step

log = logging.getLogger("flava_jax")


@dataclasses.dataclass
class Context:
    """What evaluators share: the run's config, model, tokenizer, prepared data, mesh and streams, and one PLL
    scorer (so pseudo-perplexity and BLiMP compile the same program once)."""

    config: ConfigDict
    model: FlavaForPreTraining
    tokenizer: AnyTokenizer
    data_dir: Path
    mesh: jax.sharding.Mesh
    streams: list[str]
    _scorers: dict[tuple[type, int], PLLScorer | FeatureScorer] = dataclasses.field(default_factory=dict)

    @property
    def shards(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    @property
    def has_images(self) -> bool:
        return bool({"image", "pairs"} & set(self.streams))

    def scorer(self, batch_size: int) -> PLLScorer:
        """The PLL scorer for batches of `batch_size` copies (rounded to whole shards), made once per size."""
        return self._shared(PLLScorer, batch_size, self.tokenizer.mask_id)

    def features(self, batch_size: int) -> FeatureScorer:
        """The contrastive-embedding scorer for batches of `batch_size` (rounded to whole shards), made once."""
        return self._shared(FeatureScorer, batch_size)

    def _shared(self, kind: type, batch_size: int, *ids: int) -> Any:
        batch = max(batch_size // self.shards, 1) * self.shards
        if (kind, batch) not in self._scorers:
            self._scorers[kind, batch] = kind(self.model, *ids, self.tokenizer.pad_id, batch_size=batch,
                                              sharding=sharding_lib.batch_sharding(self.mesh))
        return self._scorers[kind, batch]


class Evaluator:
    """One entry of `config.eval.evaluators`; subclasses name their options in `OPTIONS` and compute `run`."""

    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, every_steps: int, options: Mapping[str, Any], context: Context) -> None:
        self.name, self.every_steps = name, every_steps

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every_steps == 0 or step == total_steps

    def run(self, params: Any) -> dict[str, float]:
        raise NotImplementedError


class ValidationLoss(Evaluator):
    """`val/<objective>`: the mean loss of each objective over `batches` held-out batches of `batch_size`."""

    OPTIONS = ("batch_size", "batches")

    def __init__(self, name: str, every_steps: int, options: Mapping[str, Any], context: Context) -> None:
        super().__init__(name, every_steps, options, context)
        config, data_dir = context.config, context.data_dir
        eval_step = make_eval_step(context.model, config.data.mlm_probability, config.data.mask_patches)
        self.eval_step = jax.jit(sharding_lib.shard_activations(eval_step, context.mesh,
                                                                config.sharding.activation_rules),
                                 out_shardings=sharding_lib.replicated(context.mesh))
        self.sharding = sharding_lib.batch_sharding(context.mesh)
        settings = pipeline.PipelineSettings.from_config(config, str(data_dir))
        self.batches: dict[str, list[dict[str, np.ndarray]]] = {}
        for stream in context.streams:
            key = pipeline.VALIDATION_KEYS[stream]
            available = len(pipeline.source(data_dir, key)) if pipeline.manifest(data_dir)["shards"].get(key) else 0
            size = min(options["batch_size"], available) // context.shards * context.shards
            if size == 0:
                log.warning("too few held-out %s examples (%d) for a validation batch over %d shards: no validation "
                            "loss for it", stream, available, context.shards)
                continue
            dataset = pipeline.stream_dataset(settings, stream, size // jax.process_count(), context.tokenizer,
                                              train=False)
            self.batches[stream] = [dataset[i] for i in range(min(options["batches"], len(dataset)))]

    def run(self, params: Any) -> dict[str, float]:
        sums: dict[str, list[float]] = collections.defaultdict(list)
        for stream, batches in self.batches.items():
            for batch in batches:
                out = self.eval_step(params, {stream: sharding_lib.global_batch(batch, self.sharding)})
                for key, value in out.items():
                    if key.startswith("loss/"):
                        sums[f"val/{key[5:]}"].append(float(value))
        return {k: float(np.mean(v)) for k, v in sums.items()}


class PseudoPerplexity(Evaluator):
    """`pppl` and `pppl_token_weighted` over the first `texts` held-out texts, truncated at `max_length` tokens."""

    OPTIONS = ("texts", "max_length", "batch_size")

    def __init__(self, name: str, every_steps: int, options: Mapping[str, Any], context: Context) -> None:
        super().__init__(name, every_steps, options, context)
        texts = [records.decode_text(r) for r in read_stream(context.data_dir, "heldout")][: options["texts"]]
        self.texts = [context.tokenizer.encode(t, options["max_length"]) for t in texts]
        self.scorer = context.scorer(options["batch_size"])

    def run(self, params: Any) -> dict[str, float]:
        return pseudo_perplexity(self.scorer.token_logprobs(params, self.texts)) if self.texts else {}


class Blimp(Evaluator):
    """`blimp/...` accuracies: a pair is right when the good sentence's PLL (in bits) beats the bad one's."""

    OPTIONS = ("dir", "limit", "paradigms", "batch_size")

    def __init__(self, name: str, every_steps: int, options: Mapping[str, Any], context: Context) -> None:
        super().__init__(name, every_steps, options, context)
        self.pairs: list[Any] = []
        directory = options["dir"]
        if directory and not Path(directory).is_dir():
            log.warning("config.eval.evaluators.%s.dir %s does not exist: no BLiMP during training", name, directory)
        elif directory:
            self.pairs, problems = read_blimp(directory, limit=options["limit"],
                                              paradigms=list(options["paradigms"]) or None)
            for problem in problems:
                log.warning("BLiMP: %s", problem)
        encode = context.tokenizer.encode
        self.sentences = [ids for p in self.pairs for ids in (encode(p.good, 512), encode(p.bad, 512))]
        self.scorer = context.scorer(options["batch_size"])

    def run(self, params: Any) -> dict[str, float]:
        if not self.pairs:
            return {}
        bits = [s / LN2 for s in self.scorer.token_logprobs(params, self.sentences)]
        return blimp_accuracy(self.pairs, bits[0::2], bits[1::2])


class _VisionEvaluator(Evaluator):
    """An evaluator of the contrastive embeddings; reports nothing in a run without images (as the reference)."""

    def __init__(self, name: str, every_steps: int, options: Mapping[str, Any], context: Context) -> None:
        super().__init__(name, every_steps, options, context)
        self.features = context.features(options["batch_size"])
        self.image_size = context.model.config.image_config.image_size
        self.max_length = context.config.data.pair_max_length
        self.encode = context.tokenizer.encode
        if not context.has_images:
            log.info("config.eval.evaluators.%s: the run has no images, so no %s", name, name)

    def functions(self, params: Any) -> tuple[Any, Any, Any]:
        """The task's text, image and ITM scorers at `params`."""
        return (lambda ids: self.features.texts(params, ids), lambda pixels: self.features.images(params, pixels),
                lambda ids, pixels: self.features.itm(params, ids, pixels))


class ZeroShot(_VisionEvaluator):
    """`zeroshot/top1`, `zeroshot/top5`: the paper's ImageNet zero-shot accuracy (flava_jax/common/zeroshot.py)."""

    OPTIONS = ("dir", "class_names", "limit", "templates", "special_tokens", "batch_size")

    def __init__(self, name: str, every_steps: int, options: Mapping[str, Any], context: Context) -> None:
        super().__init__(name, every_steps, options, context)
        self.task = None
        directory = options["dir"]
        if context.has_images and not directory:
            log.warning("config.eval.evaluators.%s.dir is not set: no zero-shot classification during training "
                        "(set it to ImageNet's validation images)", name)
        elif context.has_images:
            try:
                self.task = vision_tasks.zeroshot_task(directory, self.encode, self.image_size, self.max_length,
                                                       options["limit"], options["class_names"],
                                                       options["templates"], options["special_tokens"])
            except (ValueError, FileNotFoundError) as e:
                raise ConfigError(f"config.eval.evaluators.{name}.dir: {e}") from e

    def run(self, params: Any) -> dict[str, float]:
        if self.task is None:
            return {}
        result, _ = vision_tasks.score_zeroshot(self.task, *self.functions(params)[:2])
        return {"zeroshot/top1": result["top1"], "zeroshot/top5": result["top5"]}


class Retrieval(_VisionEvaluator):
    """`retrieval/i2t_r1` ... `retrieval/t2i_r10`: image-text recall at 1, 5 and 10 (flava_jax/common/retrieval.py);
    a recall whose k is not below the number of candidates is left out."""

    OPTIONS = ("data", "limit", "itm_rerank", "batch_size")

    def __init__(self, name: str, every_steps: int, options: Mapping[str, Any], context: Context) -> None:
        super().__init__(name, every_steps, options, context)
        self.task, self.itm_rerank = None, options["itm_rerank"]
        if not context.has_images:
            return
        try:
            self.task = vision_tasks.retrieval_task(options["data"] or context.data_dir, self.encode, self.image_size,
                                                    self.max_length, options["limit"])
        except (ValueError, FileNotFoundError) as e:
            if options["data"]:
                raise ConfigError(f"config.eval.evaluators.{name}.data: {e}") from e
            log.warning("config.eval.evaluators.%s: no retrieval during training: %s", name, e)

    def run(self, params: Any) -> dict[str, float]:
        if self.task is None:
            return {}
        result, *_ = vision_tasks.score_retrieval(self.task, *self.functions(params), self.itm_rerank)
        return {f"retrieval/{k}": result[k] for k in recall_keys() if result[k] is not None}


TYPES: dict[str, type[Evaluator]] = {"validation_loss": ValidationLoss, "pppl": PseudoPerplexity, "blimp": Blimp,
                                     "zeroshot": ZeroShot, "retrieval": Retrieval}


def specs(config: ConfigDict) -> list[tuple[type[Evaluator], str, int, dict[str, Any]]]:
    """(type, name, interval, options) of each entry of `config.eval.evaluators`, in order; a bad entry raises
    ConfigError naming it (checked at start-up, before any data is read)."""
    out = []
    for name, spec in config.eval.evaluators.items():
        key = f"config.eval.evaluators.{name}"
        kind = spec.get("type")
        if kind not in TYPES:
            raise ConfigError(f"{key}.type: {kind!r} is not one of {sorted(TYPES)}")
        cls = TYPES[kind]
        known = {"type", "every_steps", *cls.OPTIONS}
        missing, unknown = sorted(set(cls.OPTIONS) - set(spec)), sorted(set(spec) - known)
        if missing or unknown:
            raise ConfigError(f"{key}: a {kind} evaluator takes {sorted(known)}; "
                              f"missing {missing}, unknown {unknown}")
        every = config.eval.every_steps if spec.get("every_steps") is None else spec["every_steps"]
        if every <= 0:
            raise ConfigError(f"{key}.every_steps: {every} is not a positive number of steps")
        out.append((cls, name, every, {k: spec[k] for k in cls.OPTIONS}))
    return out


def build(config: ConfigDict, context: Context) -> list[Evaluator]:
    """One evaluator per entry of `config.eval.evaluators`, in its order."""
    return [cls(name, every, options, context) for cls, name, every, options in specs(config)]
