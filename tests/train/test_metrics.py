"""`metrics.train_flops` against a FLOP count made here from the model's parameter tree, `Throughput` against a
fake clock, and metrics.jsonl resumed after a torn or damaged line.

The independent count follows the usual "6 N tokens" rule: each matmul kernel of N elements costs 2 N FLOPs per
position it is applied at going forward and twice that going backward, so trainable modules cost 6 N per position
and the frozen codebook 2 N. N comes from the kernels of `FlavaForPreTraining.init_params`'s tree (its shapes, by
`jax.eval_shape`, so nothing runs); the positions each module sees come from how the model runs a stream. The only
matmuls without a kernel, attention's scores and mixing, are added per layer. Element-wise work (biases,
LayerNorm, softmax, activations) is not counted, by the same convention as MFU.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import struct
import threading
import time
from pathlib import Path

import jax
import pytest
from flax.traverse_util import flatten_dict

from flava_jax import FlavaConfig, FlavaForPreTraining
from flava_jax.train import metrics, tensorboard

# Both counts are exact integers up to float64 rounding (~1e-16 per operation). The smallest term, the ITM
# classifier's 2 B 2 D, is ~1e-10 of a full-size pairs step, so a 1e-9 tolerance would not see it missing.
REL = 1e-12

# Kernels no loss reads, which XLA drops from a train step: each encoder's tanh pooler (the ITM head has its own).
UNUSED = ("flava/text_model/pooler/", "flava/image_model/pooler/", "flava/multimodal_model/pooler/")


@functools.cache
def kernels(preset: str) -> dict[str, int]:
    """'module/path/' -> elements of its matmul or conv kernel, for every kernel of the preset's parameter tree."""
    shapes = jax.eval_shape(FlavaForPreTraining(FlavaConfig.from_preset(preset)).init_params, jax.random.key(0))
    return {"/".join(path[:-1]) + "/": math.prod(leaf.shape) for path, leaf in flatten_dict(shapes).items()
            if path[-1] == "kernel"}


class Count:
    """Model FLOPs of one training micro-batch, accumulated module by module from the parameter tree."""

    def __init__(self, preset: str) -> None:
        self.config = FlavaConfig.from_preset(preset)
        self.kernels = kernels(preset)
        self.used: set[str] = set()
        self.total = 0

    def params(self, prefix: str) -> int:
        """Kernel elements under `prefix` (marking those kernels used)."""
        found = [path for path in self.kernels if path.startswith(prefix)]
        assert found, f"no kernels under {prefix}"
        self.used.update(found)
        return sum(self.kernels[path] for path in found)

    def matmul(self, prefix: str, positions: int, passes: int = 3) -> None:
        """Kernels under `prefix` applied at `positions` (tokens, patches or pixels): 2 N per position forward,
        `passes` = 3 with the backward pass, 1 for frozen modules."""
        self.total += passes * 2 * self.params(prefix) * positions

    def encoder(self, model: str, batch: int, length: int) -> None:
        """One trained pass of a transformer encoder over (batch, length): its layers' kernels at every token, and
        per layer and head the two (L x d) (d x L) products QK^T and PV."""
        prefix = f"flava/{model}/encoder/layer/"
        self.matmul(prefix, batch * length)
        layers = {path[len(prefix):].split("/")[0] for path in self.kernels if path.startswith(prefix)}
        sub = {"text_model": self.config.text_config, "image_model": self.config.image_config,
               "multimodal_model": self.config.multimodal_config}[model]
        heads, head_dim = sub.num_attention_heads, sub.head_dim
        self.total += 3 * len(layers) * 2 * (2 * batch * heads * length * length * head_dim)

    def image_pass(self, batch: int) -> None:
        """The patch embedding (a conv of stride = kernel size: its kernel once per patch), then the encoder over
        CLS + patches."""
        patches = self.config.image_config.num_patches
        self.matmul("flava/image_model/embeddings/patch_embeddings/", batch * patches)
        self.encoder("image_model", batch, patches + 1)

    def codebook(self, batch: int) -> None:
        """The frozen codebook, forward only: every conv (stride 1, same padding) at every pixel of its input;
        the input conv and group 1 at full size, each later group after one more 2x pool, the output conv at
        group 4's size."""
        side = self.config.codebook_image_size
        sides = {"input/": side, "group_1/": side, "group_2/": side // 2, "group_3/": side // 4,
                 "group_4/": side // 8, "output/": side // 8}
        for part, s in sides.items():
            self.matmul(f"image_codebook/blocks/{part}", batch * s * s, passes=1)


def text_stream(preset: str, batch: int, length: int, positions: int, unmasked_passes: bool) -> Count:
    """Masked text through the text encoder, the MLM head at the `positions` gathered per example. The unmasked
    pass feeds only the contrastive loss, which a text batch lacks."""
    count = Count(preset)
    for _ in range(2 if unmasked_passes else 1):
        count.encoder("text_model", batch, length)
    count.matmul("mlm_head/", batch * positions)
    return count


def image_stream(preset: str, batch: int, positions: int, unmasked_passes: bool) -> Count:
    """Masked image through the image encoder, the MIM head at `positions` patches per example, and the codebook
    for the MIM labels."""
    count = Count(preset)
    for _ in range(2 if unmasked_passes else 1):
        count.image_pass(batch)
    count.matmul("mim_head/", batch * positions)
    count.codebook(batch)
    return count


def pairs_stream(preset: str, batch: int, length: int, text_positions: int, image_positions: int) -> Count:
    """Unmasked and masked passes of both encoders (contrastive reads the unmasked, the multimodal encoder the
    masked), both projected into the multimodal encoder over [CLS; image CLS + patches; text], the MMM heads at
    the gathered positions, the ITM head on the multimodal CLS, the contrastive projections of each CLS and the
    two (B x P) (P x B) logit products, and the codebook for the MMM-image labels."""
    count = Count(preset)
    c = count.config
    image_tokens = c.image_config.num_patches + 1
    for _ in range(2):
        count.image_pass(batch)
        count.encoder("text_model", batch, length)
    count.matmul("flava/image_to_mm_projection/", batch * image_tokens)
    count.matmul("flava/text_to_mm_projection/", batch * length)
    count.encoder("multimodal_model", batch, 1 + image_tokens + length)
    count.matmul("mmm_text_head/", batch * text_positions)
    count.matmul("mmm_image_head/", batch * image_positions)
    count.matmul("itm_head/", batch)
    count.matmul("flava/image_projection/", batch)
    count.matmul("flava/text_projection/", batch)
    count.total += 3 * 2 * (2 * batch * batch * c.projection_dim)
    count.codebook(batch)
    # Every kernel but the unused poolers and the unimodal heads (MLM, MIM) is counted: a module added to the
    # model cannot go uncounted here.
    heads = ("mlm_head/", "mim_head/")
    assert count.used == {p for p in count.kernels if not p.startswith(UNUSED + heads)}
    return count


# (preset, batch, text length, text positions, image positions): sizes of a test run and of the paper's config.
SIZES = [("tiny", 3, 16, 7, 5), ("full", 32, 512, 220, 75), ("full", 8, 77, 38, 75), ("half", 16, 128, 60, 75)]


@pytest.mark.parametrize("unmasked_passes", [False, True])
@pytest.mark.parametrize("preset, batch, length, positions, _", SIZES)
def test_text_stream_flops_match_an_independent_count(preset: str, batch: int, length: int, positions: int, _: int,
                                                      unmasked_passes: bool) -> None:
    """train_flops("text") is 3x the text encoder's kernels per token plus attention, and the MLM head at the
    gathered positions only (with unmasked_passes, one more encoder pass)."""
    count = text_stream(preset, batch, length, positions, unmasked_passes)
    got = metrics.train_flops(count.config, "text", batch, length, positions, 0, unmasked_passes=unmasked_passes)
    assert got == pytest.approx(count.total, rel=REL)


@pytest.mark.parametrize("unmasked_passes", [False, True])
@pytest.mark.parametrize("preset, batch, _, __, positions", SIZES)
def test_image_stream_flops_match_an_independent_count(preset: str, batch: int, _: int, __: int, positions: int,
                                                       unmasked_passes: bool) -> None:
    """train_flops("image") is 3x the patch embedding and image encoder plus the MIM head at the masked patches,
    and 1x the frozen codebook."""
    count = image_stream(preset, batch, positions, unmasked_passes)
    got = metrics.train_flops(count.config, "image", batch, 0, 0, positions, unmasked_passes=unmasked_passes)
    assert got == pytest.approx(count.total, rel=REL)


@pytest.mark.parametrize("preset, batch, length, text_positions, image_positions", SIZES)
def test_pairs_stream_flops_match_an_independent_count(preset: str, batch: int, length: int, text_positions: int,
                                                       image_positions: int) -> None:
    """train_flops("pairs") counts every kernel the pairs losses use (all but the unimodal heads and the poolers)
    at the positions it sees, attention of all five encoder passes, the contrastive logits, the codebook once."""
    count = pairs_stream(preset, batch, length, text_positions, image_positions)
    got = metrics.train_flops(count.config, "pairs", batch, length, text_positions, image_positions)
    assert got == pytest.approx(count.total, rel=REL)


def test_codebook_flops_match_its_convolutions() -> None:
    """codebook_flops is the forward cost of every conv kernel of the tree at its resolution, for the tiny
    codebook (a group without an id_path conv) and the full one."""
    for preset in ("tiny", "full"):
        count = Count(preset)
        count.codebook(5)
        assert set(count.used) == {p for p in count.kernels if p.startswith("image_codebook/")}
        assert metrics.codebook_flops(count.config, 5) == pytest.approx(count.total, rel=REL)


def test_full_text_step_is_six_n_tokens_plus_attention() -> None:
    """The headline figure, by hand: BERT-base layers (12 x (4 768^2 + 2 768 3072) weights) at 6 FLOPs per weight
    per token, plus 3 x 4 B L^2 D of attention per layer, plus the MLM head (768^2 + 768 x 30522) at 6 per
    weight per gathered token."""
    b, length, k = 8, 512, 220
    n = 12 * (4 * 768**2 + 2 * 768 * 3072)
    expected = 6 * n * b * length + 3 * 12 * 4 * b * length**2 * 768 + 6 * (768**2 + 768 * 30522) * b * k
    got = metrics.train_flops(FlavaConfig.from_preset("full"), "text", b, length, k, 0)
    assert got == pytest.approx(expected, rel=REL)
    assert sum(kernels("full")[p] for p in kernels("full") if p.startswith("flava/text_model/encoder/")) == n


def test_layer_names_are_what_the_count_expects() -> None:
    """The count's layer indexing reads `encoder/layer/<i>/`: the tree has one per configured layer."""
    config = FlavaConfig.from_preset("full")
    for model, sub in (("text_model", config.text_config), ("image_model", config.image_config),
                       ("multimodal_model", config.multimodal_config)):
        layers = {m.group(1) for p in kernels("full") if (m := re.match(rf"flava/{model}/encoder/layer/(\d+)/", p))}
        assert layers == {str(i) for i in range(sub.num_hidden_layers)}


# ------------------------------------------------------------------------------------------------ Throughput
class FakeClock:
    """A clock that moves only when the test advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


KEYS = {"perf/steps_per_s", "perf/examples_per_s", "perf/data_wait_fraction", "perf/tflops_per_s_per_device",
        "perf/mfu"}


def test_throughput_reports_rates_over_the_window() -> None:
    """Over 4 s with 10 steps of 64 examples and 2e13 FLOPs on 8 devices of 1e14 peak, 1 s of it waiting for data:
    2.5 steps/s, 160 examples/s, wait 25 %, 2.5 x 2e13 / 8 = 6.25 TFLOP/s per device, MFU 6.25 %."""
    clock = FakeClock()
    meter = metrics.Throughput(2e13, 64, 1e14, 8, clock=clock)
    for _ in range(10):
        meter.waited(0.1)
        clock.advance(0.4)
        meter.stepped()
    out = meter.report()
    assert set(out) == KEYS
    assert out == pytest.approx({"perf/steps_per_s": 2.5, "perf/examples_per_s": 160.0,
                                 "perf/data_wait_fraction": 0.25, "perf/tflops_per_s_per_device": 6.25,
                                 "perf/mfu": 0.0625}, rel=1e-12)


def test_throughput_windows_are_separate() -> None:
    """report() starts a new window: a wait and steps after it count only in the next report, and time before it
    not at all. stepped(n) counts n steps."""
    clock = FakeClock()
    meter = metrics.Throughput(1e12, 4, 2e12, 1, clock=clock)
    meter.waited(3.0)  # the wait happens in the first window
    clock.advance(6.0)
    meter.stepped(3)
    first = meter.report()
    assert first["perf/data_wait_fraction"] == pytest.approx(0.5)
    assert first["perf/steps_per_s"] == pytest.approx(0.5)
    meter.waited(1.0)  # after the report: the second window's
    clock.advance(2.0)
    meter.stepped()
    second = meter.report()
    assert second == pytest.approx({"perf/steps_per_s": 0.5, "perf/examples_per_s": 2.0,
                                    "perf/data_wait_fraction": 0.5, "perf/tflops_per_s_per_device": 0.5,
                                    "perf/mfu": 0.25}, rel=1e-12)
    clock.advance(5.0)  # nothing happens: an empty window reports zero rates, not the previous ones
    assert meter.report() == pytest.approx(dict.fromkeys(KEYS, 0.0))


def test_throughput_reset_drops_the_window_so_far() -> None:
    """reset() (the trainer's, after evaluation and saving) forgets the steps, waits and time before it."""
    clock = FakeClock()
    meter = metrics.Throughput(1e12, 2, 1e13, 2, clock=clock)
    meter.waited(7.0)
    meter.stepped(5)
    clock.advance(100.0)  # e.g. an evaluation
    meter.reset()
    meter.waited(0.5)
    clock.advance(2.0)
    meter.stepped(4)
    out = meter.report()
    assert out == pytest.approx({"perf/steps_per_s": 2.0, "perf/examples_per_s": 4.0,
                                 "perf/data_wait_fraction": 0.25, "perf/tflops_per_s_per_device": 1.0,
                                 "perf/mfu": 0.1}, rel=1e-12)


def test_throughput_counts_each_steps_own_flops() -> None:
    """Steps of other model FLOPs (length buckets) count theirs: 2 steps at the default 1e12 and 2 at 4e11 over
    2 s on one device of 1e13 peak: (2e12 + 8e11) / 2 = 1.4 TFLOP/s, MFU 14%."""
    clock = FakeClock()
    meter = metrics.Throughput(1e12, 4, 1e13, 1, clock=clock)
    meter.stepped(2)
    meter.stepped(flops=4e11)
    meter.stepped(flops=4e11)
    clock.advance(2.0)
    out = meter.report()
    assert out["perf/tflops_per_s_per_device"] == pytest.approx(1.4)
    assert out["perf/mfu"] == pytest.approx(0.14)


def test_throughput_without_a_known_peak_or_elapsed_time() -> None:
    """No peak (NaN from device_peak_flops, or 0) gives MFU NaN and the other rates still; a report with no time
    elapsed divides by 1 ns rather than by zero."""
    for peak in (float("nan"), 0.0):
        clock = FakeClock()
        meter = metrics.Throughput(1e12, 1, peak, 1, clock=clock)
        clock.advance(1.0)
        meter.stepped()
        out = meter.report()
        assert math.isnan(out["perf/mfu"])
        assert out["perf/steps_per_s"] == 1.0 and out["perf/tflops_per_s_per_device"] == 1.0
    meter = metrics.Throughput(1e12, 1, 1e12, 1, clock=FakeClock())
    meter.stepped()
    assert meter.report()["perf/steps_per_s"] == pytest.approx(1e9)


def test_throughput_uses_perf_counter_by_default() -> None:
    """Without an injected clock the meter reads time.perf_counter (no timing is asserted)."""
    import time

    assert metrics.Throughput(1.0, 1, 1.0, 1).clock is time.perf_counter


ROWS = ['{"step": 1, "loss": 9.5}', '{"step": 2, "loss": 9.25}', '{"step": 3, "loss": 9.0}']


def test_a_torn_last_line_of_metrics_jsonl_is_dropped_on_resume(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A kill mid-append leaves half a row and no newline; the resume keeps every whole row up to its step."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(ROWS) + '\n{"step": 4, "lo')
    with caplog.at_level(logging.WARNING, logger="flava_jax"):
        writer = metrics.MetricWriter(tmp_path, resume_step=3)
    writer.close()
    assert path.read_text() == "\n".join(ROWS) + "\n"
    assert f"{path}:4: dropped a torn last line" in caplog.text
    writer = metrics.MetricWriter(tmp_path, resume_step=2)  # rows past the checkpoint go, as before
    writer.write(3, {"loss": 8.5})
    writer.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 9.5}, {"step": 2, "loss": 9.25}, {"step": 3, "loss": 8.5}]


@pytest.mark.parametrize("bad", ['{"step": 2, "lo', "\x00\x00\x00", '[1, 2]'])
def test_a_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join([ROWS[0], bad, ROWS[2]]) + "\n")
    with pytest.raises(metrics.MetricsFileError, match=rf"^{re.escape(str(path))}:2: not a metrics row"):
        metrics.MetricWriter(tmp_path, resume_step=3)
    assert path.read_text() == "\n".join([ROWS[0], bad, ROWS[2]]) + "\n"  # left as it was


def tfrecords(path: Path) -> list[bytes]:
    """The records of a TFRecord file, read by its layout (u64 length, u32 masked CRC, data, u32 masked CRC) with
    no writer code; each CRC checked with tensorboardX's CRC32C."""
    from tensorboardX.crc32c import crc32c

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        header, (length,) = data[at:at + 8], struct.unpack("<Q", data[at:at + 8])
        record = data[at + 12:at + 12 + length]
        assert struct.unpack("<II", data[at + 8:at + 12] + data[at + 12 + length:at + 16 + length]) == (
            masked(header), masked(record))
        out.append(record)
        at += 16 + length
    return out


def test_crc32c_check_value() -> None:
    """The CRC-32C catalogue's check value (the CRC of b"123456789") and the empty string's."""
    assert tensorboard.crc32c(b"123456789") == 0xE3069283
    assert tensorboard.crc32c(b"") == 0


def test_tensorboard_events_are_on_disk_after_each_write_with_no_thread_left(tmp_path: Path) -> None:
    """Each write's scalars are in the events file when write returns (nothing waits in a queue for a background
    thread, which could outlive a run stopped by a full disk), values and timings alike; read with tensorboardX's
    protos (the test extras)."""
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import Event

    threads = threading.active_count()
    writer = metrics.MetricWriter(tmp_path)
    writer.write(5, {"loss": 2.5}, {"perf/steps_per_s": 0.25})
    writer.write(10, {"loss": 1.5, "count": 3})
    writer.write(2**40, {"a/b": -0.125})
    assert threading.active_count() == threads
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    parsed = [Event.FromString(record) for record in tfrecords(events)]
    assert parsed[0].file_version == "brain.Event:2"
    assert [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in parsed[1:]] == [
        (5, {"loss": 2.5, "perf/steps_per_s": 0.25}), (10, {"loss": 1.5, "count": 3.0}), (2**40, {"a/b": -0.125})]
    assert all(abs(e.wall_time - time.time()) < 600 for e in parsed)
    writer.close()
