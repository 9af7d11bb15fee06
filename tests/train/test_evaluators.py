"""The in-training evaluators of the contrastive embeddings: nothing read and nothing reported in a run without
images (the reference put random numbers there), a bad zero-shot folder is a start-up error naming its key, and a
run whose prepared data holds no held-out pairs trains on without retrieval."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import pytest

from flava_jax.common.settings import ConfigError
from flava_jax.data.tokenizer import Tokenizer
from flava_jax.model.config import FlavaConfig
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.train import evaluators
from flava_jax.train import sharding as sharding_lib
from tests.configs import debug_config


def _context(debug_data: Path, streams: list[str], **options: Any) -> tuple[evaluators.Context, Any]:
    config = debug_config()
    for key, value in options.items():
        name, option = key.split("__")
        config.eval.evaluators[name][option] = value
    mesh = sharding_lib.make_mesh({"data": 1}, jax.devices()[:1])
    context = evaluators.Context(config, FlavaForPreTraining(FlavaConfig.from_preset("tiny")),
                                 Tokenizer.load(debug_data / "tokenizer.model"), debug_data, mesh, streams)
    return context, config


def _build(context: evaluators.Context, config: Any, *names: str) -> list[evaluators.Evaluator]:
    return [cls(name, every, options, context) for cls, name, every, options in evaluators.specs(config)
            if name in names]


def test_a_run_without_images_reads_and_reports_nothing(debug_data: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "no_such_folder")  # would be a start-up error in a run with images
    context, config = _context(debug_data, ["text"], zeroshot__dir=missing, retrieval__data=missing)
    with caplog.at_level(logging.INFO, logger="flava_jax"):
        built = _build(context, config, "zeroshot", "retrieval")
    assert [e.run(params=None) for e in built] == [{}, {}]
    assert "the run has no images, so no zeroshot" in caplog.text and "so no retrieval" in caplog.text


def test_a_bad_zeroshot_folder_is_a_start_up_error_naming_the_key(debug_data: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    context, config = _context(debug_data, ["text", "image", "pairs"], zeroshot__dir=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"^config\.eval\.evaluators\.zeroshot\.dir: .*no image set found"):
        _build(context, config, "zeroshot")


def test_no_held_out_pairs_means_no_retrieval_and_a_warning(debug_data: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    manifest = json.loads((debug_data / "manifest.json").read_text())
    manifest["shards"].pop("heldout_pair")
    (data / "manifest.json").write_text(json.dumps(manifest))
    (data / "tokenizer.model").write_bytes((debug_data / "tokenizer.model").read_bytes())
    context, config = _context(data, ["text", "image", "pairs"])
    with caplog.at_level(logging.WARNING, logger="flava_jax"):
        (retrieval,) = _build(context, config, "retrieval")
    assert retrieval.run(params=None) == {}
    assert "config.eval.evaluators.retrieval: no retrieval during training" in caplog.text


def test_features_over_a_mesh_of_eight_are_one_devices(tiny_params: Any) -> None:
    """The contrastive embeddings and ITM scores with every batch split over 8 (faked) devices equal the
    unsharded ones: batches padded to whole shards, outputs replicated."""
    import numpy as np

    from flava_jax.train.feature_scorer import FeatureScorer

    model = FlavaForPreTraining(FlavaConfig.from_preset("tiny"))
    sharding = sharding_lib.batch_sharding(sharding_lib.make_mesh({"data": 8}, jax.devices()[:8]))
    ids = [[1, 5, 6, 2], [1, 7, 2], [1, 9, 9, 9, 9, 2], [3, 4]]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    one, eight = FeatureScorer(model, 0, batch_size=8), FeatureScorer(model, 0, batch_size=8, sharding=sharding)
    np.testing.assert_allclose(eight.texts(tiny_params, ids), one.texts(tiny_params, ids), atol=1e-6)
    np.testing.assert_allclose(eight.images(tiny_params, pixels), one.images(tiny_params, pixels), atol=1e-6)
    np.testing.assert_allclose(eight.itm(tiny_params, ids[:3], pixels), one.itm(tiny_params, ids[:3], pixels),
                               atol=1e-5)
