"""The real WiT sample bundled with the package (flava_jax/sample_data; licences in its LICENSES.md)."""

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
