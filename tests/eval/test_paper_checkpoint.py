"""The paper's released checkpoints, in their layout (a pickled Lightning + torch.compile state dict with
`_orig_mod.` keys and tied head biases, a config with `compile_submodels`, BERT's tokenizer files, a directory named
as the Hub repositories are), built here from the tiny model: converted once, scored exactly as the same weights
exported natively, placed in their grid cell by the report, refused when the pickle holds more than tensors, and
started from by the trainer (`config.init_from`) with their parameters."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from flava_jax import FlavaConfig, save_pretrained
from flava_jax.data.wordpiece import BUNDLED, WordPieceTokenizer
from tests.configs import REPO

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG = FlavaConfig.from_preset("tiny", text_config={"vocab_size": 30522})  # BERT's vocabulary, as the paper's
NAME = "bestckpt_half_sized_text1_vision1"  # the Hub repositories' pattern: text 1% = 10M words, images 1% = 40K


@pytest.fixture(scope="module")
def weights(tiny_params: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(parameters, their native export): the tiny model with BERT's vocabulary, weights spread out. The session's
    tiny parameters with the vocabulary-sized ones drawn afresh: compiling another random init costs 10 s on CPU."""
    from flava_jax import FlavaForPreTraining

    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(FlavaForPreTraining(CONFIG).init_params, jax.random.key(1))
    params = jax.tree.map(lambda x, shape: (np.asarray(x) if x.shape == shape.shape else np.zeros(shape.shape,
                                                                                                  np.float32))
                          + 0.1 * rng.standard_normal(shape.shape).astype(np.float32), tiny_params, shapes)
    native = tmp_path_factory.mktemp("native")
    save_pretrained(CONFIG, params, native, tokenizer=WordPieceTokenizer.load(BUNDLED["bert-base-uncased"]))
    return params, native


def _compiled_key(key: str) -> str:
    """torch.compile's wrapping of the paper's submodels: flava.text_model.X -> flava.text_model._orig_mod.X."""
    parts = key.split(".")
    return ".".join([*parts[:2], "_orig_mod", *parts[2:]]) if parts[0] == "flava" and len(parts) > 2 else key


@pytest.fixture(scope="module")
def snapshot(weights: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The native export rewritten in the layout of the paper's Hub repositories."""
    _, native = weights
    out = tmp_path_factory.mktemp("hub") / NAME
    out.mkdir()
    state = transformers.FlavaForPreTraining.from_pretrained(native).state_dict()
    assert "mlm_head.bias" in state and "mlm_head.decoder.bias" in state  # the tied biases the paper's files carry
    torch.save({_compiled_key(k): v.clone() for k, v in state.items()}, out / "pytorch_model.bin")
    config = json.loads((native / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "compile_submodels": True}))
    WordPieceTokenizer.load(BUNDLED["bert-base-uncased"]).save_pretrained(out)  # BertTokenizerFast files
    assert not list(out.glob("*.safetensors"))
    return out


def test_a_released_checkpoint_scores_exactly_like_its_weights_loaded_natively(
        weights: tuple[Any, Path], snapshot: Path, tmp_path: Path) -> None:
    from flava_jax.eval.cli import evaluate
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "blimp").is_dir():
        pytest.skip(f"needs real BLiMP in {SHARED_DATA / 'blimp'} (present in CI, absent in a fresh clone)")
    pppl = tmp_path / "pppl.txt"
    pppl.write_text("The cat sat on the mat.\nA photograph of a lighthouse at dusk.\n")
    _, native = weights
    ours, theirs = (evaluate(model, ["blimp", "pppl"], SHARED_DATA / "blimp", tmp_path / name, limit=3,
                             pppl_file=pppl, device="cpu") for model, name in ((native, "native"),
                                                                              (snapshot, "released")))
    assert (snapshot.parent / f"{NAME}.flava_jax" / "model.safetensors").is_file()  # converted once, beside it
    assert ours["blimp"] == theirs["blimp"] and ours["pppl"] == theirs["pppl"]
    per_pair = [(tmp_path / name / "blimp_predictions.jsonl").read_text() for name in ("native", "released")]
    assert per_pair[0] == per_pair[1] and per_pair[0].count("\n") == 3 * 67

    from flava_jax.eval.report import load_runs

    (run,) = load_runs([tmp_path / "released"])
    assert (run.cell, run.size) == ("10M/40K", "half") and "half_sized_text1_vision1" in run.found_by


def test_export_from_converts_and_init_from_starts_training_from_its_parameters(
        weights: tuple[Any, Path], snapshot: Path, debug_data: Path, tmp_path: Path) -> None:
    from flava_jax.common.settings import ConfigError
    from flava_jax.export import convert_released
    from flava_jax.train.trainer import Trainer
    from tests.configs import debug_config

    params, _ = weights
    converted = convert_released(str(snapshot), tmp_path / "converted")
    config = debug_config()
    config.data.tokenizer = "bert-base-uncased"
    config.model.text_config.vocab_size = 30522
    config.eval.evaluators = {}
    config.init_from = str(converted)
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.step == 0
    for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(trainer.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(theirs), ours)
    config.model.text_config.vocab_size = 512  # the debug model's, not the checkpoint's
    with pytest.raises(ConfigError, match=r"config\.init_from=.* another architecture .*text_config\.vocab_size"):
        Trainer(config, tmp_path / "other")
    assert not (tmp_path / "other").exists()  # refused before the workdir is touched


def test_a_pickle_holding_more_than_tensors_is_refused_and_nothing_in_it_runs(snapshot: Path, tmp_path: Path) -> None:
    from flava_jax.eval.cli import evaluate
    from flava_jax.eval.torch_pll import BadExport

    marker = tmp_path / "ran"
    evil = tmp_path / NAME
    evil.mkdir()
    for file in snapshot.iterdir():
        if file.name != "pytorch_model.bin":
            (evil / file.name).write_bytes(file.read_bytes())
    torch.save({"w": torch.zeros(1), "payload": _Payload(marker)}, evil / "pytorch_model.bin")
    with pytest.raises(BadExport, match="weights_only=True.*never unpickles arbitrary objects"):
        evaluate(evil, ["pppl"], tmp_path, tmp_path / "out", pppl_file=snapshot / "vocab.txt", device="cpu")
    assert not marker.exists()


class _Payload:
    """Unpickled, it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return pathlib.Path.touch, (str(self.marker),)


def test_a_hub_id_without_network_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "flava_jax.evaluate", f"--model=theodor1289/{NAME}",
                             "--tasks=pppl", f"--data={tmp_path}", f"--out={tmp_path / 'out'}", "--device=cpu"],
                            cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"--model=theodor1289/{NAME}: could not download it from the Hugging Face Hub" in result.stderr
    assert "--local-dir DIR" in result.stderr
