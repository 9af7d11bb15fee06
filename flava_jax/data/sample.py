"""The real image-text sample bundled with the package (flava_jax/sample_data; licences in its LICENSES.md)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from PIL import Image

from flava_jax.data.transforms import load_rgb

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"


def load_sample(directory: str | os.PathLike | None = None) -> list[tuple[Image.Image, str]]:
    """(RGB image, caption) pairs listed in `directory`/captions.tsv (default: the bundled sample)."""
    directory = Path(directory) if directory is not None else SAMPLE_DIR
    with open(directory / "captions.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(load_rgb(directory / "images" / row["file"]), row["caption"]) for row in rows]
