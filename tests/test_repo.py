"""The repository's promises to newcomers: README's commands, CI running the same test command, the README example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


def test_main_runs_the_debug_config_on_the_bundled_sample(tmp_path: Path) -> None:
    """README's first command, minus the install: the sample is prepared into WORKDIR/data and every objective
    gets a finite loss on a pipeline batch."""
    result = subprocess.run([sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py",
                             f"--workdir={tmp_path}", "--config.compilation_cache_dir="], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    out = json.loads((tmp_path / "sample_forward.json").read_text())
    assert set(out["text"]["losses"]) == {"mlm"}
    assert set(out["image"]["losses"]) == {"mim"}
    assert set(out["pairs"]["losses"]) == {"itm", "global_contrastive", "mmm_image", "mmm_text"}
    assert all(0 < v < 20 for batch in ("text", "image", "pairs") for v in out[batch]["losses"].values())
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["complete"] and (tmp_path / "data" / "tokenizer.model").is_file()


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py",
                             f"--workdir={tmp_path}", "--config.model.text_config.num_attention_heads=5"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "config.model.text_config.hidden_size" in result.stderr and "num_attention_heads=5" in result.stderr
