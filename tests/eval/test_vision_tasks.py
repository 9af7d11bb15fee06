"""Zero-shot classification and retrieval on an export, end to end on real photos: PyTorch (transformers'
FlavaModel feature methods, what users run) against JAX (what training runs), bad input counted, and --device."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flava_jax import FlavaConfig, FlavaForPreTraining
from flava_jax.common import retrieval
from flava_jax.data import vision_tasks
from flava_jax.data.tokenizer import Tokenizer
from flava_jax.train.feature_scorer import FeatureScorer
from tests.configs import REPO

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

# photo in ../shared/data/photos/skimage -> its class
CLASSES = {"chelsea.png": "cat", "rocket.jpg": "rocket", "coffee.png": "coffee cup", "astronaut.png": "astronaut",
           "coins.png": "coin", "camera.png": "camera", "clock_motion.png": "clock", "retina.jpg": "retina",
           "hubble_deep_field.jpg": "galaxy"}
TEMPLATES = 8


@pytest.fixture(scope="module")
def photo_classes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(class folders, class-names file) of the real photos, one class each; plus a JPEG that does not decode and
    a class folder with no images, which must be counted."""
    from tests.conftest import SHARED_DATA

    photos = SHARED_DATA / "photos" / "skimage"
    if not photos.is_dir():
        pytest.skip(f"needs the photos in {photos} (present in CI, absent in a fresh clone)")
    root = tmp_path_factory.mktemp("photo_classes")
    lines = []
    for file, name in CLASSES.items():
        folder = name.replace(" ", "_")
        (root / "set" / folder).mkdir(parents=True)
        shutil.copy(photos / file, root / "set" / folder / file)
        lines.append(f"{folder}\t{name}\n")
    (root / "set" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)
    (root / "set" / "empty").mkdir()
    (root / "names.txt").write_text("".join(lines) + "empty\tnothing\n")
    return root / "set", root / "names.txt"


def _jax_functions(export: Path, spread_params: Any, debug_data: Path) -> tuple[Any, Any, Any, Any]:
    """The tokenizer's encode and the JAX text, image and ITM scorers at the export's parameters."""
    scorer = FeatureScorer(FlavaForPreTraining(FlavaConfig.from_preset("tiny")), pad_id=0, batch_size=4)
    return (Tokenizer.load(debug_data / "tokenizer.model").encode, lambda ids: scorer.texts(spread_params, ids),
            lambda pixels: scorer.images(spread_params, pixels),
            lambda ids, pixels: scorer.itm(spread_params, ids, pixels))


@pytest.mark.parametrize("special_tokens", [False, True])
def test_zeroshot_in_torch_and_jax_agree_on_real_photos(export: Path, spread_params: Any, debug_data: Path,
                                                         photo_classes: tuple[Path, Path], special_tokens: bool,
                                                         tmp_path: Path) -> None:
    from flava_jax.eval.cli import VisionOptions, evaluate, evaluate_zeroshot
    from flava_jax.eval.torch_pll import load_export

    images, names = photo_classes
    encode, texts, pixels, _ = _jax_functions(export, spread_params, debug_data)
    task = vision_tasks.zeroshot_task(images, encode, 32, 77, class_names=names, templates=TEMPLATES,
                                      special_tokens=special_tokens)
    ours, jax_logits = vision_tasks.score_zeroshot(task, texts, pixels)
    options = VisionOptions(zeroshot_data=str(images), class_names=str(names), templates=TEMPLATES,
                            special_tokens=special_tokens)
    results = evaluate(export, ["zeroshot"], ".", tmp_path, device="cpu", vision=options)
    theirs = results["zeroshot"]
    assert theirs == ours == json.loads((tmp_path / "results.json").read_text())["zeroshot"]
    assert theirs["images"] == 9 and theirs["classes"] == 10 and theirs["templates"] == TEMPLATES
    assert theirs["skipped"] == {"image does not decode": 1, "class folder with no images": 1}
    assert "Zero-shot classification (MTR)" in (tmp_path / "results.md").read_text()
    model, tokenizer = load_export(export)
    _, torch_logits = evaluate_zeroshot(model, tokenizer, images, options)
    np.testing.assert_allclose(torch_logits, jax_logits, atol=1e-4)
    assert (torch_logits.argmax(1) == jax_logits.argmax(1)).all()
    assert np.ptp(jax_logits) > 1.0  # the classes are told apart, so agreement means something


@pytest.mark.parametrize("itm_rerank", [0, 4])
def test_retrieval_in_torch_and_jax_agree_on_real_captions(export: Path, spread_params: Any, debug_data: Path,
                                                           shared_data: Path, itm_rerank: int) -> None:
    """The same recalls and the same rank of every query's answer, both ways; with the ITM head reranking the
    first 4, the reranked scores too (the JAX side masks the text padding in the multimodal encoder as
    transformers 5 does)."""
    from flava_jax.eval.cli import evaluate_retrieval
    from flava_jax.eval.torch_pll import load_export

    captions = shared_data / "photos" / "skimage" / "captions.tsv"
    encode, texts, pixels, itm = _jax_functions(export, spread_params, debug_data)
    ours, *jax_scores = vision_tasks.score_retrieval(vision_tasks.retrieval_task(captions, encode, 32, 77),
                                                     texts, pixels, itm, itm_rerank)
    model, tokenizer = load_export(export)
    theirs, *torch_scores = evaluate_retrieval(model, tokenizer, captions, itm_rerank=itm_rerank)
    assert ours == theirs and theirs["pairs"] == theirs["images"] == 9 and theirs["itm_rerank"] == itm_rerank
    truth = np.arange(9)
    np.testing.assert_allclose(torch_scores[0], jax_scores[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(torch_scores[1], jax_scores[1], rtol=1e-5, atol=1e-5)
    for ranks, (t, j) in zip((retrieval.ranks_image_to_text, retrieval.ranks_text_to_image),
                             zip(torch_scores, jax_scores, strict=True), strict=True):
        np.testing.assert_array_equal(ranks(t if ranks is retrieval.ranks_image_to_text else t.T, truth),
                                      ranks(j if ranks is retrieval.ranks_image_to_text else j.T, truth))
    assert theirs["chance"] == pytest.approx({"i2t_r1": 1 / 9, "t2i_r1": 1 / 9, "i2t_r5": 5 / 9, "t2i_r5": 5 / 9,
                                              "i2t_r10": None, "t2i_r10": None})  # 10 is not below 9
    assert theirs["i2t_r10"] is None


def test_a_device_torch_cannot_use_is_one_line(export: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "-m", "flava_jax.evaluate", f"--model={export}", "--device=cuda",
                             "--tasks=zeroshot", f"--data={tmp_path}", f"--out={tmp_path / 'out'}"],
                            cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--device=cuda: this torch has no CUDA" in result.stderr
    from flava_jax.eval.torch_pll import torch_device

    assert torch_device("auto") == "cpu"
    with pytest.raises(ValueError, match="not a torch device"):
        torch_device("gpu0")
