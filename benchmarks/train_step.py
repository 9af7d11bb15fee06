"""Examples/s and MFU of one training step: flava_jax's jitted step beside transformers' FlavaForPreTraining with
torch AdamW (the reference's step), same model, same batch, same losses, as a ratio.

For each size (tiny, half, full) and batch (image-text pairs at 77 tokens, text-only padded to 512):

* same work: flava_jax's train step (`step.make_train_step`: the trainer's loss, AdamW with the two learning-rate
  groups, clipping, frozen codebook) against HF's forward + backward + torch AdamW with the same groups and
  clipping. On text batches both sides run the unmasked text pass HF runs and no loss uses (forward only; XLA
  would otherwise drop it).
* minus waste (text only): the paper-faithful recipe without that pass and without padding to 512: each batch is
  padded to the length bucket (64, 128, 256, 512) that fits its longest text, as `data.length_buckets` does; the
  attention mask makes the per-example losses identical (tests/train/test_trainer.py). The length mix is that of the
  real WiT text examples bundled in the package, in WordPiece tokens estimated as 1.3 per word plus [CLS] and [SEP].

Each side runs in a process of its own (torch's step in a worker the script drives over a pipe), each size in its
own pair: torch's and XLA's thread pools and heaps sharing one process slowed both, erratically. Both sides run
under the host malloc setting the trainer picks for the size on a CPU (`--host-malloc`, default auto, as
config.host_malloc; flava_jax/train/host_malloc.py), so torch gets the same help from it.

MFU counts the same useful model FLOPs for both sides (metrics.train_flops: trainable work 3x, the codebook once,
no unmasked pass) over this machine's measured XLA f32 matmul peak. Step times are medians over --repeats
interleaved runs of --steps steps each, after a warm-up step (and the compile).

    python benchmarks/train_step.py [--sizes tiny,half,full] [--batches pairs,text] [--batch-size 4]
                                    [--host-malloc auto|keep|system]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import base  # noqa: E402
from flava_jax import FlavaConfig, FlavaForPreTraining  # noqa: E402
from flava_jax.data import records  # noqa: E402
from flava_jax.data.masking import BlockMasking, mask_tokens  # noqa: E402
from flava_jax.data.prepare import PrepareSettings, prepare, read_stream  # noqa: E402
from flava_jax.data.sample import SAMPLE_DIR  # noqa: E402
from flava_jax.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID  # noqa: E402
from flava_jax.data.transforms import model_inputs  # noqa: E402
from flava_jax.train import host_malloc, optim  # noqa: E402
from flava_jax.train import metrics as metrics_lib  # noqa: E402
from flava_jax.train.step import TrainState, make_loss_fn, make_train_step, mask_capacity  # noqa: E402

LENGTH = {"pairs": 77, "text": 512}
BUCKETS = (64, 128, 256, 512)
MLM_PROBABILITY, MASK_PATCHES = 0.4, 75
LOSSES = ("mlm", "mim", "itm", "global_contrastive", "mmm_image", "mmm_text")
REPLY = "@@ "  # marks the torch worker's replies on its stdout
HEADER = f"{'size':5} {'batch':13} {'flava_jax ex/s':>14} {'MFU':>6} {'torch ex/s':>11} {'MFU':>6} {'ratio':>6}"


# ---------------------------------------------------------------------------------------------------- batches
def make_batch(config: FlavaConfig, kind: str, batch: int, length: int, rng: np.random.Generator) -> dict:
    """One pipeline-format batch (what MultitaskIterator yields): full-length texts masked as BERT does and, for
    pairs, the bundled photos at the model's image size with BEiT block masks and one ITM negative."""
    vocab = config.text_config.vocab_size
    ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    masked, labels = mask_tokens(ids, rng, MLM_PROBABILITY, vocab, (PAD_ID, CLS_ID, SEP_ID), MASK_ID)
    out = {"input_ids": ids, "input_ids_masked": masked, "mlm_labels": labels,
           "attention_mask": np.ones_like(ids)}
    if kind == "pairs":
        size = config.image_config.image_size
        photos = sorted((SAMPLE_DIR / "images").iterdir())
        out["pixels"] = np.stack([np.asarray(Image.open(photos[i % len(photos)]).convert("RGB").resize(
            (size, size), Image.Resampling.BICUBIC)) for i in range(batch)])
        grid = size // config.image_config.patch_size
        masking = BlockMasking(grid, min(MASK_PATCHES, grid * grid // 2), min_block=min(16, grid))
        out["bool_masked_pos"] = np.stack([masking(rng).reshape(-1) for _ in range(batch)])
        out["itm_labels"] = (np.arange(batch) != 1).astype(np.int32)  # the second pair is a negative
    return out


def wit_text_lengths() -> list[int]:
    """Token lengths of the real WiT text examples bundled in the package (1.3 WordPiece tokens per word)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(PrepareSettings.from_config(base.get_config()), seed=0, text_words=-1, images=0,
                                       vocab_size=256, heldout_fraction=0.0, download=False,
                                       image_dirs=(str(SAMPLE_DIR / "images"),))
        prepare(settings, [str(SAMPLE_DIR / "wit")], Path(tmp))
        texts = [records.decode_text(r) for r in read_stream(Path(tmp), "text")]
    return [min(512, math.ceil(1.3 * len(t.split())) + 2) for t in texts]


# ------------------------------------------------------------------------------------------------------ steps
class OurStep:
    """flava_jax's train step on one stream; `unmasked_text_pass` adds HF's unused unmasked text forward."""

    def __init__(self, config: FlavaConfig, kind: str, batch: dict, unmasked_text_pass: bool) -> None:
        model = FlavaForPreTraining(config)
        params = model.init_params(jax.random.key(0))
        tx = optim.build(base.optim_config(), params)
        loss_fn = make_loss_fn(model, MLM_PROBABILITY, MASK_PATCHES)
        if unmasked_text_pass:
            loss_fn = _with_unmasked_text_pass(model, loss_fn)
        self.step = jax.jit(make_train_step(loss_fn, tx), donate_argnums=0)
        self.state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
        self.batch = jax.device_put({kind: {k: v[None] for k, v in batch.items()}})
        self.weights = {"streams": {kind: 1.0}, "losses": dict.fromkeys(LOSSES, 1.0)}
        self.run(1)  # compile and warm up

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch, self.weights, jax.random.key(0))
        jax.block_until_ready(metrics)
        return (time.perf_counter() - start) / steps


def _with_unmasked_text_pass(model: FlavaForPreTraining, loss_fn: Any) -> Any:
    def text_pass(module: FlavaForPreTraining, **inputs: Any) -> jax.Array:
        return module.flava(**inputs, deterministic=False).text_embeddings

    def wrapped(params: Any, micro: dict, weights: dict, rng: jax.Array, contrastive: Any = None) -> Any:
        total, metrics = loss_fn(params, micro, weights, rng, contrastive)
        text = micro["text"]
        unused = model.apply({"params": params}, input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                             method=text_pass)
        # Forward only, as in torch (no loss reads it); x * 0 is not folded away for floats.
        return total + 0.0 * jax.lax.stop_gradient(unused).sum(), metrics

    return wrapped


class TorchStep:
    """The reference's step: HF FlavaForPreTraining forward (train mode), backward, clip at 1.0, torch AdamW with
    the text encoder at 7.5e-4 and the rest at 1e-3, the codebook frozen."""

    def __init__(self, config: FlavaConfig, batch: dict) -> None:
        import torch
        import transformers

        torch.manual_seed(0)
        self.torch = torch
        self.model = transformers.FlavaForPreTraining(transformers.FlavaConfig(**config.to_hf_dict())).train()
        for p in self.model.image_codebook.parameters():
            p.requires_grad_(False)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if "text_model" in n], "lr": 7.5e-4},
             {"params": [p for n, p in named if "text_model" not in n], "lr": 1e-3}],
            betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
        sizes = (config.image_config.image_size, config.codebook_image_size)
        inputs = {k: np.array(v) for k, v in model_inputs(batch, *sizes).items()}  # writable copies for torch
        self.inputs = {k: torch.as_tensor(v.astype(np.int64) if v.dtype == np.int32 else v)
                       for k, v in inputs.items()}
        self.run(1)

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.model(**self.inputs).loss
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps


class TorchWorker:
    """`TorchStep` in a process of its own, with this process's environment; `run(steps)` as TorchStep's."""

    def __init__(self, size: str, kind: str, batch_size: int, length: int, seed: int) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, f"--torch-worker={size},{kind},{batch_size},"
                                         f"{length},{seed}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.threads = int(self._reply())

    def run(self, steps: int) -> float:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return float(self._reply())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()

    def _reply(self) -> str:
        while line := self.process.stdout.readline():
            if line.startswith(REPLY):
                return line[len(REPLY):].strip()
        raise RuntimeError(f"the torch worker exited with status {self.process.wait()}")


def torch_worker(spec: str) -> None:
    """The worker side of `TorchWorker`: build the step, say how many threads torch uses, then time steps."""
    import torch

    size, kind, batch_size, length, seed = spec.split(",")
    config = FlavaConfig.from_preset(size)
    step = TorchStep(config, make_batch(config, kind, int(batch_size), int(length), np.random.default_rng(int(seed))))
    print(f"{REPLY}{torch.get_num_threads()}", flush=True)
    for line in sys.stdin:
        print(f"{REPLY}{step.run(int(line))}", flush=True)


# ------------------------------------------------------------------------------------------------------- main
def flops(config: FlavaConfig, kind: str, batch: int, length: int) -> float:
    patches = min(MASK_PATCHES, config.image_config.num_patches // 2)
    return metrics_lib.train_flops(config, kind, batch, length, mask_capacity(length, MLM_PROBABILITY), patches)


def interleaved(steps: dict[str, Any], repeats: int, per_run: int) -> dict[str, float]:
    """Median seconds per step of each, timed in turns so that machine noise hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step.run(per_run))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,half,full")
    parser.add_argument("--batches", default="pairs,text")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument("--host-malloc", choices=host_malloc.POLICIES, default="auto",
                        help="config.host_malloc for both sides (auto: what the trainer would pick for each size)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "train_step.json"))
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)  # internal: size,kind,batch,length,seed
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(args.torch_worker)
    sizes = args.sizes.split(",")
    if len(sizes) > 1:
        return _each_size_in_its_process(sizes, args)
    host_malloc.ensure(args.host_malloc, FlavaConfig.from_preset(sizes[0]))  # before JAX or torch start threads

    peak = metrics_lib.measured_matmul_peak()
    print(f"measured XLA f32 matmul peak: {peak / 1e9:.0f} GFLOP/s; jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}, torch {importlib.metadata.version('torch')}; "
          f"host malloc: {'freed memory kept' if host_malloc.in_effect() else 'system'}", flush=True)
    lengths = wit_text_lengths()
    b = args.batch_size
    rng = np.random.default_rng(0)  # the bucketed batches
    rows = []
    print(HEADER, flush=True)
    for size in args.sizes.split(","):
        config = FlavaConfig.from_preset(size)
        for kind in args.batches.split(","):
            length = min(LENGTH[kind], config.text_config.max_position_embeddings)
            seed = zlib.crc32(f"{size}/{kind}".encode())  # the same batch on both sides
            sides = {"ours": OurStep(config, kind, make_batch(config, kind, b, length, np.random.default_rng(seed)),
                                     unmasked_text_pass=kind == "text"),
                     "torch": TorchWorker(size, kind, b, length, seed)}
            seconds = interleaved(sides, args.repeats, args.steps)
            threads = sides["torch"].threads
            sides["torch"].close()
            del sides
            gc.collect()
            work = flops(config, kind, b, length)
            row = {"size": size, "batch": f"{kind} L={length}", "what": "same work",
                   "ours_examples_per_s": b / seconds["ours"], "torch_examples_per_s": b / seconds["torch"],
                   "ours_mfu": work / seconds["ours"] / peak, "torch_mfu": work / seconds["torch"] / peak,
                   "torch_threads": threads}
            row["ratio"] = row["ours_examples_per_s"] / row["torch_examples_per_s"]
            rows.append(row)
            _print(row)
            if kind == "text":
                rows.append(minus_waste(config, b, lengths, args, rng, row["torch_examples_per_s"], peak))
                _print(rows[-1])
    _write(args.out, {"peak_flops": peak, "batch_size": b, "host_malloc_kept": host_malloc.in_effect(),
                      "text_lengths": lengths, "rows": rows})


def _each_size_in_its_process(sizes: list[str], args: argparse.Namespace) -> None:
    """Run this script once per size (so that each gets its own host malloc setting) and merge the results."""
    rows, parts = [], []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "part.json"
            subprocess.run([sys.executable, __file__, f"--sizes={size}", f"--batches={args.batches}",
                            f"--batch-size={args.batch_size}", f"--steps={args.steps}", f"--repeats={args.repeats}",
                            f"--host-malloc={args.host_malloc}", f"--out={out}"], check=True)
            part = json.loads(out.read_text())
        parts.append(part)
        rows += [{**row, "host_malloc_kept": part["host_malloc_kept"]} for row in part["rows"]]
    print(f"\nall sizes:\n{HEADER}")
    for row in rows:
        _print(row)
    _write(args.out, {"peak_flops": {s: p["peak_flops"] for s, p in zip(sizes, parts, strict=True)},
                      "batch_size": args.batch_size, "text_lengths": parts[0]["text_lengths"], "rows": rows})


def _write(path: str, results: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


def minus_waste(config: FlavaConfig, b: int, lengths: list[int], args: argparse.Namespace,
                rng: np.random.Generator, torch_examples_per_s: float, peak: float) -> dict[str, Any]:
    """The text stream without the unmasked pass, each batch padded to its bucket: examples/s over the bundled
    WiT length mix (batches formed within a bucket, as the bucketing window does)."""
    limit = config.text_config.max_position_embeddings
    share: dict[int, float] = {}
    for n in lengths:
        bucket = min(x for x in (*BUCKETS, limit) if x >= min(n, limit))
        share[bucket] = share.get(bucket, 0.0) + 1 / len(lengths)
    seconds, work = 0.0, 0.0
    for bucket, fraction in share.items():
        step = OurStep(config, "text", make_batch(config, "text", b, bucket, rng), unmasked_text_pass=False)
        t = interleaved({"ours": step}, args.repeats, args.steps)["ours"]
        del step
        gc.collect()
        seconds += fraction * t
        work += fraction * flops(config, "text", b, bucket)
    ours = b / seconds
    return {"size": config_name(config), "batch": "text bucketed", "what": "minus waste",
            "buckets": {str(k): v for k, v in share.items()}, "ours_examples_per_s": ours,
            "torch_examples_per_s": torch_examples_per_s, "ours_mfu": work / seconds / peak,
            "torch_mfu": float("nan"), "ratio": ours / torch_examples_per_s}


def config_name(config: FlavaConfig) -> str:
    for name in ("tiny", "half", "full"):
        if FlavaConfig.from_preset(name) == config:
            return name
    return "custom"


def _print(row: dict[str, Any]) -> None:
    torch_mfu = "" if math.isnan(row["torch_mfu"]) else f"{100 * row['torch_mfu']:5.1f}%"
    print(f"{row['size']:5} {row['batch']:13} {row['ours_examples_per_s']:14.3f} {100 * row['ours_mfu']:5.1f}% "
          f"{row['torch_examples_per_s']:11.3f} {torch_mfu:>6} {row['ratio']:5.2f}x  ({row['what']})", flush=True)


if __name__ == "__main__":
    main()
