"""The trainer, top to bottom: set up (mesh, data, model, optimiser, checkpoints), restore, loop, save.

Every optimizer step consumes `accumulation` micro-steps of all streams at once (sub-batch sizes proportional to
the stream weights, see scheduler.py), so one jitted program computes all five objectives. Metrics are read one
step late, so the host never waits on the device between steps; a non-finite loss stops the run before anything
is saved. SIGTERM (a preemption) saves a checkpoint at the current step and exits; rerunning the same command
resumes from the latest complete checkpoint, data order included.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from flava_jax.common.progress import duration
from flava_jax.common.settings import ConfigError
from flava_jax.data import pipeline, prepare, stage
from flava_jax.data.stream_sources import StreamSources, prepare_streams
from flava_jax.data.tokenizer import AnyTokenizer, load_tokenizer
from flava_jax.model import attention_gpu
from flava_jax.model.config import FlavaConfig
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.train import checkpoint as checkpoint_lib
from flava_jax.train import evaluators as evaluators_lib
from flava_jax.train import init_from, optim, run_file
from flava_jax.train import metrics as metrics_lib
from flava_jax.train import sharding as sharding_lib
from flava_jax.train.config_check import check_config
from flava_jax.train.scheduler import MultimodalScheduler, micro_batch_sizes, stream_weights
from flava_jax.train.step import (
    ParamRead,
    TrainState,
    make_contrastive_cache,
    make_loss_fn,
    make_train_step,
    mask_capacity,
)

log = logging.getLogger("flava_jax")
STAGE_TIMEOUT_S = 24 * 3600  # copying a 4M-image grid cell to a slow host disk can take hours


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, inconsistent data); the message says what and where."""


def model_config(config: ConfigDict) -> FlavaConfig:
    """The FlavaConfig of `config.model`; an invalid value raises ConfigError naming the config key."""
    try:
        return FlavaConfig(**config.model.to_dict())
    except ConfigError as e:
        raise ConfigError(str(e).replace("FlavaConfig.", "config.model.", 1)) from e


def prepared_data(config: ConfigDict, workdir: Path) -> Path:
    """`config.data.dir` (a URL is first staged to local disk: ArrayRecord reads local files only), or
    WORKDIR/data prepared from `config.data.sources` when it is not there yet."""
    if config.data.dir and stage.is_url(config.data.dir):
        try:
            path = stage.stage(config.data.dir, config.data.stage_dir or stage.default_destination(config.data.dir))
        except stage.StageError as e:
            raise ConfigError(f"config.data.dir: {e}") from e
        # Hosts copy at different speeds; none may start the step's collectives before all have the data.
        _barrier("flava_jax_data_staged", timeout_s=STAGE_TIMEOUT_S)
        return path
    if config.data.dir:
        path = Path(config.data.dir)
        if not (path / prepare.MANIFEST).is_file():
            raise ConfigError(f"config.data.dir: {path} holds no prepared data; run python -m "
                              f"flava_jax.data.prepare --config=... --out={path}")
        return path
    path = workdir / "data"
    if not (path / prepare.MANIFEST).is_file():
        if not any(config.data.get(key) for key in ("sources", "text_sources", "image_sources", "pair_sources")):
            raise ConfigError("config.data.dir: set it to prepared data, or set config.data.sources to prepare from")
        if jax.process_count() > 1:
            raise ConfigError("config.data.dir: prepare the data once before a multi-process run and point every "
                              "process at it")
        prepare_streams(prepare.PrepareSettings.from_config(config), StreamSources.from_config(config.data), path)
    return path


@dataclasses.dataclass(frozen=True)
class Plan:
    """Batch shapes of a run: global examples per micro-step and stream, micro-steps per optimizer step."""

    weights: dict[str, float]
    micro_batch: dict[str, int]
    accumulation: int

    @property
    def examples_per_step(self) -> int:
        return self.accumulation * sum(self.micro_batch.values())


def plan(config: ConfigDict, streams: list[str], mesh: jax.sharding.Mesh) -> Plan:
    """Stream weights by the paper's rule and micro-batch sizes rounded up to whole data x fsdp shards."""
    t = config.train
    text = t.text_percent if t.text_percent is not None else config.data.text_words / prepare.WORDS_PER_PERCENT
    image = t.image_percent if t.image_percent is not None else config.data.images / prepare.IMAGES_PER_PERCENT
    if config.data.text_words < 0 or config.data.images < 0:  # "everything": use what was prepared
        text, image = float("text" in streams), float("image" in streams)
    weights = {s: w for s, w in stream_weights(text, image, t.sampling_temperature).items() if s in streams}
    if not weights:
        raise ConfigError(f"config.data: the prepared data holds none of the weighted streams (it has {streams})")
    total = sum(weights.values())
    weights = {s: w / total for s, w in weights.items()}
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    quantum = math.lcm(shards, jax.process_count())
    sizes = {s: -(-n // quantum) * quantum for s, n in micro_batch_sizes(weights, t.micro_batch_size).items()}
    accumulation = max(1, round(t.batch_size / sum(sizes.values())))
    return Plan(weights, sizes, accumulation)


def _stack(micro_batches: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    return {stream: {key: np.stack([m[stream][key] for m in micro_batches]) for key in micro_batches[0][stream]}
            for stream in micro_batches[0]}


def _barrier(name: str, timeout_s: int = 1200) -> None:
    """Wait until every process gets here. JAX's CPU collectives give peers 30 s to meet at their first
    collective, and set-up work only process 0 does (TensorBoard, whose import pulls in torch) or uneven compile
    times can take processes further apart; this barrier (the coordination service's, not a collective) waits."""
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name, timeout=timeout_s, processes=set(range(jax.process_count())))


class _Preemption:
    """SIGTERM as a decision every process takes at the same step.

    One process: a Python handler sets a flag the loop reads after each step. Several: JAX's preemption sync
    point (the coordination service hears SIGTERM on any process and picks a step all of them reach), so no
    process starts saving while another runs the next step.
    """

    def __init__(self) -> None:
        self.requested = False
        self._shared = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
        self._previous = None if self._shared else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step`; call it after every step, on every process."""
        if self._shared and not self.requested and multihost_utils.reached_preemption_sync_point(step):
            log.warning("preemption notice: every process saves a checkpoint at step %d, then exits", step)
            self.requested = True
        return self.requested

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass(frozen=True)
class Parts:
    """The model, optimiser, shardings and compiled functions of a run on a mesh."""

    model: FlavaForPreTraining
    tx: Any
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs with shardings: restore targets
    batch_sharding: Any  # stacked micro-batches: (micro_steps, examples, ...)
    init_state: Any  # rng -> TrainState, jitted, born sharded
    train_step: Any  # (state, batch, weights, rng) -> (state, metrics), jitted, state donated


def _contrastive_cache(config: ConfigDict, model: FlavaForPreTraining) -> Any:
    """`config.train.contrastive_negatives`: "micro_batch" (the reference) or "global_batch" (every pair of a step)."""
    if config.train.contrastive_negatives == "micro_batch":  # the other value (config_check) is "global_batch"
        return None
    c = model.config
    rates = {f"config.model.{e}.{k}": getattr(getattr(c, e), k) for e in ("text_config", "image_config")
             for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
    if any(rates.values()):
        # The step-wide loss embeds every pair before the micro-steps run; with dropout the embeddings would differ.
        raise ConfigError(f"config.train.contrastive_negatives='global_batch' needs the unimodal encoders without "
                          f"dropout, but {', '.join(k for k, v in rates.items() if v)} > 0")
    return make_contrastive_cache(model)


def _param_read(config: ConfigDict, model_cfg: FlavaConfig, specs: Any) -> ParamRead:
    """Kernels cast to the compute dtype once a step (where it differs from the parameters'), and FSDP's shards
    gathered once a step with `sharding.gather_weights="step"`."""
    dtype = jnp.dtype(model_cfg.dtype)
    read = ParamRead(kernel_dtype=dtype if dtype != jnp.dtype(model_cfg.param_dtype) else None)
    if config.sharding.fsdp and config.sharding.gather_weights == "step":
        read = dataclasses.replace(read, gathered=sharding_lib.without_fsdp(specs), stored=specs)
    return read


def _kernel_for(device: Any) -> str | None:
    """The Pallas attention kernel `device` runs: compiled and checked (deviceless) for TPU v4 and newer, and for
    GPUs of attention_gpu.MIN_COMPUTE_CAPABILITY and up."""
    if device.platform == "tpu" and device.device_kind not in ("TPU v2", "TPU v3"):
        return "pallas_tpu"
    capability = getattr(device, "compute_capability", None) if device.platform == "gpu" else None
    if capability is not None and tuple(map(int, str(capability).split("."))) >= attention_gpu.MIN_COMPUTE_CAPABILITY:
        return "pallas_gpu"
    return None


def _attention_for(model_cfg: FlavaConfig, mesh: jax.sharding.Mesh) -> FlavaConfig:
    """`model.attention` for this mesh: "auto" is the mesh's Pallas kernel where it has one, XLA elsewhere."""
    device = mesh.devices.flat[0]
    kernel = _kernel_for(device)
    if model_cfg.attention == "auto":
        return model_cfg.replace(attention=kernel or "xla")
    if model_cfg.attention.startswith("pallas") and model_cfg.attention != kernel:
        raise ConfigError(f"config.model.attention={model_cfg.attention!r} does not run on this mesh's devices "
                          f"({device.device_kind}): use 'auto' (the devices' kernel, if any) or 'xla'")
    return model_cfg


def build(config: ConfigDict, model_cfg: FlavaConfig, mesh: jax.sharding.Mesh) -> Parts:
    """Everything about the model a run needs, sharded over `mesh` as `config.sharding` says."""
    model_cfg = _attention_for(model_cfg, mesh)
    model = FlavaForPreTraining(model_cfg)
    abstract_params = jax.eval_shape(model.init_params, jax.random.key(config.seed))
    specs = sharding_lib.param_specs(abstract_params, mesh, config.sharding.rules, config.sharding.fsdp,
                                     config.sharding.fsdp_min_size)
    param_shardings = sharding_lib.named(specs, mesh)
    if config.sharding.fsdp:
        sharding_lib.check_sharded(abstract_params, param_shardings, mesh, config.sharding.fsdp_min_size)
    tx = optim.build(config.optim, abstract_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    state_shardings = TrainState(step=sharding_lib.replicated(mesh), params=param_shardings,
                                 opt_state=sharding_lib.opt_state_shardings(abstract_opt, param_shardings, mesh))

    def init_state(rng: jax.Array) -> TrainState:
        params = model.init_params(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    loss_fn = make_loss_fn(model, config.data.mlm_probability, config.data.mask_patches)
    batch_sharding = sharding_lib.batch_sharding(mesh, leading=1)
    # Metrics replicated: every process reads them (a multi-process run cannot read a sharded array locally).
    step = sharding_lib.shard_activations(
        make_train_step(loss_fn, tx, _contrastive_cache(config, model), _param_read(config, model_cfg, specs)),
        mesh, config.sharding.activation_rules)
    train_step = jax.jit(step, in_shardings=(state_shardings, batch_sharding, None, None),
                         out_shardings=(state_shardings, sharding_lib.replicated(mesh)), donate_argnums=0)
    abstract_state = checkpoint_lib.abstract(TrainState(jax.ShapeDtypeStruct((), jnp.int32), abstract_params,
                                                        abstract_opt), state_shardings)
    return Parts(model, tx, state_shardings, abstract_state, batch_sharding,
                 jax.jit(init_state, out_shardings=state_shardings), train_step)


def _tokenizer(data_dir: Path, manifest: dict[str, Any], model_cfg: FlavaConfig,
               previous: dict[str, Any] | None) -> tuple[AnyTokenizer, Path, str]:
    """The prepared data's tokenizer, its file and the file's sha256 (from the manifest); it must fit the model and
    be the one the checkpoints of the `previous` run (its run.json) were trained with."""
    path = prepare.tokenizer_path(data_dir)
    tokenizer = load_tokenizer(path)
    sha256 = manifest["tokenizer"]["sha256"]
    if tokenizer.vocab_size > model_cfg.text_config.vocab_size:
        raise ConfigError(f"config.model.text_config.vocab_size: {model_cfg.text_config.vocab_size} is smaller than "
                          f"the tokenizer's {tokenizer.vocab_size} ({path})")
    if previous and previous.get("tokenizer_sha256") not in (None, sha256):
        raise ConfigError(f"config.data: the workdir's checkpoints were trained with the tokenizer "
                          f"{previous['tokenizer']}, but the prepared data {data_dir} has another ({path}); use the "
                          f"data the run started with, or a new workdir")
    return tokenizer, path, sha256


def step_flops(config: ConfigDict, model_cfg: FlavaConfig, run: Plan, text_length: int | None = None) -> float:
    """Model FLOPs of one optimizer step, all devices together (MLM at its masked capacity, MIM at its masked
    patches), text-only batches padded to `text_length` (default `data.text_max_length`)."""
    data = config.data
    lengths = {"text": text_length or data.text_max_length, "pairs": data.pair_max_length, "image": 0}
    return run.accumulation * sum(
        metrics_lib.train_flops(model_cfg, s, n, lengths[s],
                                mask_capacity(lengths[s], data.mlm_probability) if lengths[s] else 0, data.mask_patches)
        for s, n in run.micro_batch.items())


def _param_shapes(model_cfg: FlavaConfig) -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(FlavaForPreTraining(model_cfg).init_params, jax.random.key(0))
    return {path: leaf.shape for path, leaf in flatten_dict(shapes, sep="/").items()}


def _check_shapes(previous: dict[str, Any], model_cfg: FlavaConfig) -> None:
    """A model change a resume accepts must keep every parameter's shape: the checkpoints hold the run's."""
    old, new = _param_shapes(FlavaConfig(**previous["model"])), _param_shapes(model_cfg)
    differ = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    if differ:
        first = differ[0]
        raise ConfigError(f"config.model: the changes give {len(differ)} parameters another shape (e.g. {first}: "
                          f"{old.get(first, 'absent')} -> {new.get(first, 'absent')}), and the checkpoints hold the "
                          f"run's shapes, so config.allow_config_change cannot accept them; use a new workdir")


def _has_checkpoint(workdir: Path) -> bool:
    """Whether `workdir` holds a complete checkpoint (Orbax gives one its step as its name once it is complete)."""
    directory = workdir / "checkpoints"
    return directory.is_dir() and any(path.name.isdigit() for path in directory.iterdir())


def _throughput(config: ConfigDict, model_cfg: FlavaConfig, run: Plan,
                mesh: jax.sharding.Mesh) -> metrics_lib.Throughput:
    """Model FLOPs per step against the peak of the mesh's devices."""
    peak, peak_source = metrics_lib.device_peak_flops(mesh.devices.flat[0])
    flops = step_flops(config, model_cfg, run)
    log.info("%.3g model FLOPs per step; MFU against %s (%.3g FLOP/s per device)", flops, peak_source, peak)
    return metrics_lib.Throughput(flops, run.examples_per_step, peak, mesh.size)


class Trainer:
    """One run in a workdir. Construction sets it up (mesh, data, model, optimiser, checkpoints, evaluators) and
    restores the latest checkpoint if there is one; `run()` trains to `total_steps`, a scheduler stop or SIGTERM.
    `devices`: the devices `config.sharding.mesh` spans (default: all of them)."""

    def __init__(self, config: ConfigDict, workdir: str | Path, devices: Sequence[Any] | None = None) -> None:
        check_config(config)
        evaluators_lib.specs(config)
        self.config, self.workdir = config, Path(workdir)
        model_cfg = model_config(config)
        # A resume's config is checked against the run's before anything in the workdir is written.
        previous = run_file.read_run_file(self.workdir) if _has_checkpoint(self.workdir) else None
        changes = run_file.check_resume(self.workdir, previous["config"], config.to_dict()) if previous else []
        if any(key.startswith("config.model.") for key, _, _ in changes):
            _check_shapes(previous, model_cfg)
        if config.init_from and not previous:
            init_from.check_architecture(config.init_from, model_cfg)
        self.workdir.mkdir(parents=True, exist_ok=True)
        mesh = sharding_lib.make_mesh(config.sharding.mesh, devices)
        data_dir = prepared_data(config, self.workdir)
        manifest = pipeline.manifest(data_dir)
        streams = [s for s, key in pipeline.STREAM_KEYS.items() if manifest["shards"].get(key)]
        tokenizer, tokenizer_file, tokenizer_sha256 = _tokenizer(data_dir, manifest, model_cfg, previous)
        if config.init_from and not previous:
            init_from.check_tokenizer(config.init_from, tokenizer)
        self.plan = plan(config, streams, mesh)
        log.info("mesh %s; streams %s; micro-batch %s x %d accumulation = %d examples per step", dict(mesh.shape),
                 {s: round(w, 4) for s, w in self.plan.weights.items()}, self.plan.micro_batch,
                 self.plan.accumulation, self.plan.examples_per_step)
        self.parts = build(config, model_cfg, mesh)
        per_process = {s: n // jax.process_count() for s, n in self.plan.micro_batch.items()}
        self.iterator = pipeline.MultitaskIterator(pipeline.PipelineSettings.from_config(config, str(data_dir)),
                                                   per_process, tokenizer, group=self.plan.accumulation)
        self.scheduler = MultimodalScheduler.from_config(self.plan.weights, config.scheduler)
        self.checkpoints = checkpoint_lib.Checkpoints(self.workdir / "checkpoints", config.keep_checkpoints,
                                                      best_metric="pppl")
        self.state, self.step, self.saved = self._restore()
        if changes:
            log.warning("config.allow_config_change: the run goes on from step %d with %s", self.step,
                        "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes))
        run_file.write_run_file(self.workdir, model_cfg, tokenizer_file, tokenizer_sha256, config.to_dict(),
                                run_file.change_log(previous, changes, self.step))
        context = evaluators_lib.Context(config, self.parts.model, tokenizer, data_dir, mesh, list(self.plan.weights))
        self.evaluators = evaluators_lib.build(config, context)
        self._bucket_flops: dict[int, float] = {}
        self.log = metrics_lib.StepLog(metrics_lib.MetricWriter(self.workdir, resume_step=self.step),
                                       _throughput(config, model_cfg, self.plan, mesh), config.total_steps,
                                       config.log_every_steps, self._step_context)

    def _flops(self, batch: Any) -> float | None:
        """The step's model FLOPs where length buckets give its text-only batches a length of their own."""
        if not self.config.data.length_buckets or "text" not in batch:
            return None
        length = batch["text"]["input_ids"].shape[-1]
        if length not in self._bucket_flops:
            self._bucket_flops[length] = step_flops(self.config, self.parts.model.config, self.plan, length)
        return self._bucket_flops[length]

    def _restore(self) -> tuple[TrainState, int, int]:
        """(state, step, the step last saved): the latest checkpoint's, with the data and scheduler positions, or a
        fresh state at step 0."""
        restored, bad = self.checkpoints.restore_newest_good(self.parts.abstract_state)
        if restored is None and self.config.init_from:
            log.info("starting from the weights of %s (config.init_from)", self.config.init_from)
            return self._state_from(init_from.initial_params(self.config.init_from, self.parts.model.config)), 0, -1
        if restored is None:
            return self.parts.init_state(jax.random.key(self.config.seed)), 0, -1
        state, data_state, scheduler_state, step = restored
        self.iterator.set_state(data_state)
        self.scheduler.load_state_dict(scheduler_state)
        if bad:
            log.warning("resumed from %s at step %d, the newest good checkpoint (corrupt: steps %s)",
                        self.checkpoints.directory, step, bad)
        else:
            log.info("resumed from %s at step %d", self.checkpoints.directory, step)
        return state, step, step

    def _state_from(self, params: Any) -> TrainState:
        """A step-0 state holding `params` (host arrays, whole on every process), placed as the run shards them."""
        shardings = self.parts.state_shardings
        placed = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: np.asarray(x)[index]),
                              params, shardings.params)
        opt_state = jax.jit(self.parts.tx.init, out_shardings=shardings.opt_state)(placed)
        return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=placed,
                          opt_state=opt_state)

    def _step_context(self, step: int) -> dict[str, float]:
        """What a logged row adds to the step's metrics: learning rates and the sampling and loss weights."""
        weights = self.scheduler.weights()
        return {**optim.learning_rates(self.config.optim, step - 1),
                **{f"weight/{s}": w for s, w in weights["streams"].items()},
                **{f"weight/{n}": w for n, w in weights["losses"].items()}}

    def _next_batch(self) -> Any:
        micro_batches = [next(self.iterator) for _ in range(self.plan.accumulation)]
        return sharding_lib.global_batch(_stack(micro_batches), self.parts.batch_sharding)

    def _evaluate(self, due: list[evaluators_lib.Evaluator]) -> dict[str, float]:
        """The `due` evaluators' metrics at this step; validation losses feed the scheduler."""
        metrics = {k: v for e in due for k, v in e.run(self.state.params).items()}
        if self.config.scheduler.enabled:
            validation = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}
            for event in self.scheduler.update(self.step, validation):
                log.info("scheduler: %s", event)
        self.log.writer.write(self.step, metrics)
        shown = ("val/", "blimp/acc", "zeroshot/", "retrieval/")
        log.info("eval at step %d: %s", self.step, {k: round(v, 4) for k, v in metrics.items()
                                                     if "/" not in k or k.startswith(shown)})
        return metrics

    def _save(self, metrics: dict[str, float] | None = None) -> None:
        best = {"pppl": metrics["pppl"]} if metrics and "pppl" in metrics else None
        self.checkpoints.save(self.step, self.state, self.iterator.get_state(), self.scheduler.state_dict(), best)
        self.saved = self.step

    def run(self) -> dict[str, Any]:
        """Train to the end; returns the last step's metrics with `step` and `preempted`."""
        _barrier("flava_jax_loop_start")
        preemption, started = _Preemption(), time.perf_counter()
        try:
            self._loop(preemption)
            self.log.flush()
            if self.saved != self.step:
                self._save()
            self.checkpoints.wait()
        except metrics_lib.NonFiniteLoss as e:
            raise TrainingError(f"{e}; the update was skipped and the run stops without saving. The last good "
                                f"checkpoint is step {self.checkpoints.latest_step()}.") from None
        finally:
            preemption.restore()
            try:
                self.checkpoints.close()
            finally:
                self.log.writer.close()
        log.info("stopped at step %d after %s (%s)", self.step, duration(time.perf_counter() - started),
                 "preempted" if preemption.requested else "scheduler stop" if self.scheduler.stopped else "done")
        return {"step": self.step, "preempted": preemption.requested, **self.log.last}

    def _loop(self, preemption: _Preemption) -> None:
        config, base_rng = self.config, jax.random.key(self.config.seed + 1)
        while self.step < config.total_steps and not self.scheduler.stopped and not preemption.requested:
            waited = time.perf_counter()
            batch = self._next_batch()
            self.log.throughput.waited(time.perf_counter() - waited)
            weights = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), self.scheduler.weights())
            self.state, device_metrics = self.parts.train_step(self.state, batch, weights, base_rng)
            self.step += 1
            # Reads the previous step's metrics while this one runs.
            self.log.push(self.step, device_metrics, self._flops(batch))
            due = [e for e in self.evaluators if e.due(self.step, config.total_steps)]
            if preemption.reached(self.step) or due or self.step % config.checkpoint_every_steps == 0:
                self.log.flush()
                self._save(self._evaluate(due) if due else None)
                self.log.throughput.reset()  # evaluation and saving are not training throughput


def train(config: ConfigDict, workdir: str | Path, devices: Sequence[Any] | None = None) -> dict[str, Any]:
    """Train as `config` says, in `workdir` (resuming if it holds checkpoints), on `devices` (default: all);
    returns the last metrics."""
    return Trainer(config, workdir, devices).run()
