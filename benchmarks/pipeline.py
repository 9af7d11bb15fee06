"""Examples/s per CPU worker for each stream: flava_jax's Grain transforms beside the reference's way of doing the
same work (transformers' FlavaImageProcessor with masks and codebook pixels, a fast tokenizer, and
DataCollatorForLanguageModeling, plus the reference's ITM negative draw), as a ratio.

Both sides start from the same prepared records (JPEG bytes at 224x224 and text) and run in one process, one
thread: "per worker". The records are the bundled sample's real WiT texts and photos, repeated to --records per
stream (a global shuffle over a dozen records would measure Grain's index shuffle, which is slow only for tiny
datasets). Medians of --repeats runs.

    python benchmarks/pipeline.py [--examples 640] [--repeats 5] [--records 20000]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import base  # noqa: E402
from flava_jax.data import pipeline, records  # noqa: E402
from flava_jax.data.prepare import PrepareSettings, prepare, read_stream  # noqa: E402
from flava_jax.data.sample import SAMPLE_DIR  # noqa: E402
from flava_jax.data.tokenizer import Tokenizer  # noqa: E402

BATCH = {"text": 32, "image": 32, "pairs": 32}


def ours(data: Path, stream: str, examples: int) -> float:
    """flava_jax: the per-example transforms and batching of one stream, read straight from its MapDataset."""
    settings = dataclasses.replace(pipeline.PipelineSettings.from_config(base.get_config(), str(data)), seed=0,
                                   workers=0)
    tokenizer = Tokenizer.load(data / "tokenizer.model")
    dataset = pipeline.stream_dataset(settings, stream, BATCH[stream], tokenizer, process=(0, 1))
    batches = examples // BATCH[stream]
    start = time.perf_counter()
    for i in range(batches):
        dataset[i]
    return batches * BATCH[stream] / (time.perf_counter() - start)


class Reference:
    """The reference's transforms (docs/reference.md#masking, docs/reference.md#image-transforms): FlavaImageProcessor
    (PIL, as in transformers 4.29) with the BEiT mask generator and codebook pixels; text tokenised by a fast tokenizer,
    padded to the stream's length, masked by DataCollatorForLanguageModeling(mlm_probability=0.4); ITM negatives drawn
    as its ITMTransform does."""

    def __init__(self, data: Path, hf_dir: Path) -> None:
        import transformers
        from transformers.models.flava.image_processing_pil_flava import FlavaImageProcessorPil

        self.processor = FlavaImageProcessorPil()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
        self.collator = transformers.DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=0.4,
                                                                     return_tensors="pt")
        self.pair_texts = [records.decode_text(r) for r in read_stream(data, "pair")]

    def images(self, jpegs: list[bytes]) -> dict:
        images = [Image.open(io.BytesIO(j)) for j in jpegs]
        return self.processor(images, return_image_mask=True, return_codebook_pixels=True, return_tensors="np")

    def texts(self, texts: list[str], length: int) -> dict:
        encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=length)
        return self.collator([{"input_ids": ids} for ids in encoded["input_ids"]])

    def itm(self, texts: list[str]) -> tuple[list[str], list[int]]:
        out, labels = [], []
        for text in texts:
            if random.random() < 0.1:
                other = random.choice(self.pair_texts)
                while other == text:
                    other = random.choice(self.pair_texts)
                out.append(other)
                labels.append(0)
            else:
                out.append(text)
                labels.append(1)
        return out, labels

    def run(self, stream: str, items: list[records.Example], examples: int) -> float:
        size = BATCH[stream]
        batches = examples // size
        start = time.perf_counter()
        for b in range(batches):
            chunk = [items[(b * size + i) % len(items)] for i in range(size)]
            if stream == "text":
                self.texts([e.text for e in chunk], 512)
            elif stream == "image":
                self.images([e.image for e in chunk])
            else:
                texts, _ = self.itm([e.text for e in chunk])
                self.images([e.image for e in chunk])
                self.texts(texts, 77)
        return batches * size / (time.perf_counter() - start)


def build_data(tmp: Path, count: int) -> Path:
    """Prepare the bundled sample at 224x224, then write each stream's records repeated to `count`, in prepared
    layout (shards + manifest + tokenizer)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    sample = tmp / "sample"
    settings = dataclasses.replace(PrepareSettings.from_config(base.get_config()), seed=0, text_words=-1, images=-1,
                                   heldout_fraction=0.0, image_dirs=(str(SAMPLE_DIR / "images"),), download=False)
    manifest = prepare(settings,
                       [str(SAMPLE_DIR / "wit")], sample)
    data = tmp / "data"
    shards = {}
    for stream in ("text", "image", "pair"):
        originals = list(read_stream(sample, stream))
        (data / stream).mkdir(parents=True)
        writer = ArrayRecordWriter(str(data / stream / "00000.arrayrecord"), "group_size:1")
        for i in range(count):
            writer.write(originals[i % len(originals)])
        writer.close()
        shards[stream] = [{"file": f"{stream}/00000.arrayrecord", "records": count}]
    (data / "manifest.json").write_text(json.dumps({**manifest, "shards": shards}))
    (data / "tokenizer.model").write_bytes((sample / "tokenizer.model").read_bytes())
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline.json")
    args = parser.parse_args()
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = build_data(Path(tmp), args.records)
        Tokenizer.load(data / "tokenizer.model").save_pretrained(Path(tmp) / "hf")
        reference = Reference(data, Path(tmp) / "hf")
        items = {name: [records.decode(r) for r in read_stream(data, key)]
                 for name, key in pipeline.STREAM_KEYS.items()}
        results = {}
        for stream in ("text", "image", "pairs"):
            ours_runs = [ours(data, stream, args.examples) for _ in range(args.repeats)]
            ref_runs = [reference.run(stream, items[stream], args.examples) for _ in range(args.repeats)]
            a, b = statistics.median(ours_runs), statistics.median(ref_runs)
            results[stream] = {"flava_jax_examples_per_s": round(a, 1), "reference_examples_per_s": round(b, 1),
                               "ratio": round(a / b, 2), "runs": {"flava_jax": [round(x, 1) for x in ours_runs],
                                                                  "reference": [round(x, 1) for x in ref_runs]}}
    print(f"{'stream':<8}{'flava_jax ex/s':>16}{'reference ex/s':>16}{'ratio':>8}   (per worker, median of "
          f"{args.repeats})")
    for stream, r in results.items():
        print(f"{stream:<8}{r['flava_jax_examples_per_s']:>16.1f}{r['reference_examples_per_s']:>16.1f}"
              f"{r['ratio']:>7.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batch": BATCH, "examples": args.examples, "records": args.records,
                                    "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
