"""The repository's promises to newcomers: README's commands, CI running the same test command, the README example."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CPU_HEAVY, REPO, SHARED_DATA


def _readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    install, test = _readme_blocks("bash")[0].strip().splitlines()
    assert "python -m flava_jax.main --config=configs/debug.py" in install
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test in ci, f"README's test command {test!r} is not what .ci/run runs"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path) -> None:
    """The Python API example in README runs as written."""
    (example,) = [block for block in _readme_blocks("python") if "flava_jax" in block]
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def _commands(block: str) -> list[list[str]]:
    """The commands of a bash block, continuation lines joined, comments dropped, each split into words."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if shlex.split(line, comments=True)]


def _pipeline_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The whole pipeline on the bundled sample"):]
    return re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)


def _tiny_blimp(out: Path) -> Path:
    """Two BLiMP-format paradigms, for a fresh clone without ../shared/data/blimp."""
    out.mkdir()
    pairs = {"regular_plural_subject_verb_agreement_1": ("The dogs bark.", "The dogs barks."),
             "determiner_noun_agreement_1": ("These books are red.", "This books are red.")}
    for paradigm, (good, bad) in pairs.items():
        rows = [{"sentence_good": good, "sentence_bad": bad, "UID": paradigm, "linguistics_term": "x"}] * 3
        (out / f"{paradigm}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.mark.slow
@pytest.mark.xdist_group(CPU_HEAVY)
def test_readme_pipeline_on_the_bundled_sample(tmp_path: Path) -> None:
    """README's pipeline block as written (its first line is the newcomer's command): the sample is prepared, the
    tiny model trains and every objective's loss falls, then export, BLiMP + PPPL evaluation and the report."""
    block = _pipeline_block()
    install = _readme_blocks("bash")[0].strip().splitlines()[0]
    assert _commands(block)[0] == _commands(install.split("&&")[-1])[0], "README's two main commands differ"
    work = tmp_path / "flava_debug"
    blimp = SHARED_DATA / "blimp" if (SHARED_DATA / "blimp").is_dir() else _tiny_blimp(tmp_path / "blimp")
    env = {**os.environ, "BLIMP_DIR": str(blimp), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace("/tmp/flava_debug", str(work))],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stderr[-3000:]

    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 60
    for name in ("mlm", "mim", "itm", "global_contrastive", "mmm_image", "mmm_text"):
        first = np.mean([r[f"loss/{name}"] for r in train[:10]])
        last = np.mean([r[f"loss/{name}"] for r in train[-10:]])
        assert last < first, f"{name}: {first:.3f} -> {last:.3f}"
    evals = [r for r in rows if "pppl" in r]
    assert len(evals) == 3 and evals[-1]["pppl"] < evals[0]["pppl"]
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    assert manifest["complete"] and (work / "checkpoints" / "60").is_dir()

    assert json.loads((work / "export" / "config.json").read_text())["model_type"] == "flava"
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["blimp"]["pairs"] == sum(min(10, len(f.read_text().splitlines())) for f in blimp.glob("*.jsonl"))
    assert 0 <= results["blimp"]["accuracy"] <= 1
    assert results["pppl"]["texts"] == manifest["kept"]["heldout"] and np.isfinite(results["pppl"]["pppl"])
    assert (work / "report" / "report.md").is_file() and (work / "report" / "blimp_deltas.png").is_file()


@pytest.mark.slow
def test_every_other_readme_command_parses() -> None:
    """Every `python -m flava_jax...` command in README, with absl's --only_check_args: flags, the config file and
    its --config.key=value overrides are checked, nothing runs. (The pipeline block above runs for real.)"""
    readme = (REPO / "README.md").read_text()
    commands = [c for block in _readme_blocks("bash") for c in _commands(block)
                if c[:3] == ["python", "-m", c[2]] and c[2].startswith("flava_jax")]
    modules = {c[2] for c in commands}
    assert {"flava_jax.main", "flava_jax.data.prepare", "flava_jax.export", "flava_jax.evaluate",
            "flava_jax.report", "flava_jax.aot"} <= modules, modules
    for command in commands:
        result = subprocess.run([sys.executable, *command[1:], "--only_check_args"], cwd=REPO, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stderr[-2000:]}"
    assert "python -m pytest -n 2 tests" in readme


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py",
                             f"--workdir={tmp_path}", "--config.model.text_config.num_attention_heads=5"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "config.model.text_config.hidden_size" in result.stderr and "num_attention_heads=5" in result.stderr


def test_readme_results_table_is_the_papers() -> None:
    """README's results table against flava_jax.eval.paper_results (whose transcription tests/eval/test_report.py
    checks)."""
    from flava_jax.eval.paper_results import PAPER

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Results"):]
    rows = re.findall(r"^\| (10M|100M) \| (0|40K|400K|4M) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                      section, flags=re.M)
    assert len(rows) == 8
    for text, images, full_pppl, full_blimp, half_pppl, half_blimp in rows:
        full, half = PAPER["full"][f"{text}/{images}"], PAPER["half"][f"{text}/{images}"]
        assert (full.pppl, full.blimp, half.pppl, half.blimp) == tuple(
            map(float, (full_pppl, full_blimp, half_pppl, half_blimp))), (text, images)


@pytest.mark.xdist_group("repo")
def test_xdist_groups_reach_the_scheduler(request: pytest.FixtureRequest) -> None:
    """Tests marked xdist_group share one worker, and with it the runs and compiles their fixtures make once, only
    when pytest-xdist can tag their ids with the group: pytest 9.2 stopped that without a word, and each worker
    then trained those runs again."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs under README's test command (pytest -n 2, --dist=loadgroup from pytest.ini)")
    assert request.node.nodeid.endswith("@repo"), request.node.nodeid
