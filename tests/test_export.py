"""`python -m flava_jax.export`: a training checkpoint becomes an HF directory that transformers loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from flava_jax.data.tokenizer import Tokenizer
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.model.hf_io import from_pretrained
from flava_jax.train import checkpoint as checkpoint_lib
from flava_jax.train.trainer import train
from tests.configs import REPO, debug_config

# Every test here reads one short debug run, trained once on the xdist worker that runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export_run")]


@pytest.fixture(scope="session")  # not module: pytest would train again after other modules' tests
def workdir(debug_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six debug steps, evaluated and checkpointed every two."""
    out = tmp_path_factory.mktemp("run")
    train(debug_config(data__dir=str(debug_data), total_steps=6, eval__every_steps=2, checkpoint_every_steps=2,
                       keep_checkpoints=1, compilation_cache_dir=""), out, jax.devices()[:1])
    return out


def _export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flava_jax.export", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)


def test_best_checkpoint_exports_for_transformers(workdir: Path, debug_data: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    pppl = {r["step"]: r["pppl"] for r in rows if "pppl" in r}
    best = min(pppl, key=pppl.get)
    result = _export(f"--workdir={workdir}", f"--out={tmp_path}", "--step=best")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"exported step {best} " in result.stdout

    # The weights are the checkpoint's, bit for bit.
    checkpoints = checkpoint_lib.Checkpoints(workdir / "checkpoints", async_save=False)
    state, _, _, _ = checkpoints.restore(None, step=best)
    checkpoints.close()
    config, params = from_pretrained(tmp_path)
    saved = flatten_dict(jax.tree.map(np.asarray, state["params"]))
    exported = flatten_dict(params)
    assert saved.keys() == exported.keys()
    for key, value in saved.items():
        assert np.array_equal(value, exported[key]), "/".join(key)

    # transformers loads it whole, its tokenizer gives the project's ids, and its text encoder agrees with ours.
    hf, info = transformers.FlavaForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    text = "The rocket lifted off from the launch pad."
    ids = Tokenizer.load(debug_data / "tokenizer.model").encode(text, 64)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == list(ids)
    ours = FlavaForPreTraining(config).apply({"params": params}, input_ids=np.asarray([ids]),
                                             input_ids_masked=np.asarray([ids])).text_embeddings
    with torch.no_grad():
        theirs = hf.eval()(input_ids=torch.tensor([ids]), input_ids_masked=torch.tensor([ids])).text_embeddings
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-4, atol=1e-5)


def test_export_errors_say_what_to_do(workdir: Path, tmp_path: Path) -> None:
    result = _export(f"--workdir={workdir}", f"--out={tmp_path / 'a'}", "--step=3")
    assert result.returncode != 0 and "no checkpoint at step 3" in result.stderr and "there are [" in result.stderr
    result = _export(f"--workdir={tmp_path}", f"--out={tmp_path / 'b'}")
    assert result.returncode != 0 and "run.json is missing" in result.stderr
    result = _export(f"--workdir={workdir}", f"--out={tmp_path / 'c'}", "--step=soon")
    assert result.returncode != 0 and "not latest, best or a step number" in result.stderr
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_corrupt_latest_checkpoint_is_refused_naming_the_intact_steps(workdir: Path, tmp_path: Path) -> None:
    from tests.train.test_checkpoint import flip_bytes, largest_data_file

    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    steps = sorted(int(p.name) for p in (copy / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 2, steps  # the latest and the best
    flip_bytes(largest_data_file(copy / "checkpoints" / str(steps[-1])))
    result = _export(f"--workdir={copy}", f"--out={tmp_path / 'out'}")
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint step {steps[-1]} in "), result.stderr[-3000:]
    assert "is corrupt: 1 file(s) differ" in last and f"steps [{steps[0]}]: use --step=N" in last, last
    assert f"--step={steps[0]}" in last and "Traceback" not in result.stderr and "resume" not in last
    assert not (tmp_path / "out").exists() and (copy / "checkpoints" / str(steps[-1])).is_dir()  # export moves nothing


def test_a_non_empty_out_is_refused_unless_overwrite(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = _export(f"--workdir={workdir}", f"--out={tmp_path}")
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert "is not empty (it holds notes.txt)" in last and "--overwrite" in last, last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    result = _export(f"--workdir={workdir}", f"--out={tmp_path}", "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "model.safetensors").is_file()
