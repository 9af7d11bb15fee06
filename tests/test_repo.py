"""The repository's promises to newcomers: README's commands, CI running the same test command, the README example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    install, test = _readme_blocks("bash")[0].strip().splitlines()
    assert "python -m flava_jax.main --config=configs/debug.py" in install
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test in ci, f"README's test command {test!r} is not what .ci/run runs"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    """The Python API example in README runs as written."""
    (example,) = [block for block in _readme_blocks("python") if "flava_jax" in block]
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def test_main_trains_the_debug_config_and_every_objective_learns(tmp_path: Path) -> None:
    """README's first command, minus the install: the sample is prepared into WORKDIR/data, the tiny model trains,
    and each of the six losses (five objectives) ends lower than it started."""
    result = subprocess.run([sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py",
                             f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=1200,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 60
    for name in ("mlm", "mim", "itm", "global_contrastive", "mmm_image", "mmm_text"):
        first = np.mean([r[f"loss/{name}"] for r in train[:10]])
        last = np.mean([r[f"loss/{name}"] for r in train[-10:]])
        assert last < first, f"{name}: {first:.3f} -> {last:.3f}"
    evals = [r for r in rows if "pppl" in r]
    assert len(evals) == 3 and evals[-1]["pppl"] < evals[0]["pppl"]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["complete"] and (tmp_path / "checkpoints" / "60").is_dir()


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py",
                             f"--workdir={tmp_path}", "--config.model.text_config.num_attention_heads=5"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "config.model.text_config.hidden_size" in result.stderr and "num_attention_heads=5" in result.stderr
