"""The repository's promises to newcomers: the commands of README and docs/, CI running README's test command, the
Python API example, and Markdown links that lead somewhere."""

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

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
# The Markdown whose relative links must resolve; the notebooks' markdown cells are checked beside them.
MARKDOWN = [README, *DOCS, *(REPO / folder / "README.md" for folder in ("benchmarks", "launch", "notebooks"))]


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def _readme_blocks(language: str) -> list[str]:
    return _blocks(README, language)


def test_ci_runs_the_readme_test_command() -> None:
    install, test = _readme_blocks("bash")[0].strip().splitlines()
    assert "python -m flava_jax.main --config=configs/debug.py" in install
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test in ci, f"README's test command {test!r} is not what .ci/run runs"


@pytest.mark.slow
def test_python_api_example_runs(tmp_path: Path) -> None:
    """The Python API example of docs/model.md runs as written."""
    (example,) = [block for block in _blocks(REPO / "docs" / "model.md", "python") if "flava_jax" in block]
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def _commands(block: str) -> list[list[str]]:
    """The commands of a bash block, continuation lines joined, comments dropped, each split into words."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if shlex.split(line, comments=True)]


def _pipeline_block() -> str:
    readme = README.read_text()
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


def _documented_commands() -> dict[tuple[str, ...], Path]:
    """Every `python -m flava_jax...` command in the bash blocks of README and docs/*.md, each once (a command
    repeated on several pages is checked once), with the first page that shows it."""
    commands: dict[tuple[str, ...], Path] = {}
    for page in (README, *DOCS):
        for block in _blocks(page, "bash"):
            for command in _commands(block):
                if len(command) > 2 and command[:2] == ["python", "-m"] and command[2].startswith("flava_jax"):
                    commands.setdefault(tuple(command), page)
    return commands


@pytest.mark.slow
def test_every_documented_command_parses() -> None:
    """Every `python -m flava_jax...` command in README and docs/, with absl's --only_check_args: flags, the config
    file and its --config.key=value overrides are checked, nothing runs. (The pipeline block above runs for real.)
    One process per distinct command: each imports JAX, a few seconds."""
    commands = _documented_commands()
    modules = {command[2] for command in commands}
    assert {"flava_jax.main", "flava_jax.data.prepare", "flava_jax.export", "flava_jax.evaluate",
            "flava_jax.report", "flava_jax.aot"} <= modules, modules
    for command, page in commands.items():
        result = subprocess.run([sys.executable, *command[1:], "--only_check_args"], cwd=REPO, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{page.relative_to(REPO)}: {shlex.join(command)}:\n{result.stderr[-2000:]}"
    assert "python -m pytest -n 2 tests" in README.read_text()


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py",
                             f"--workdir={tmp_path}", "--config.model.text_config.num_attention_heads=5"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "config.model.text_config.hidden_size" in result.stderr and "num_attention_heads=5" in result.stderr


def test_results_table_is_the_papers() -> None:
    """The results table of docs/evaluation.md against flava_jax.eval.paper_results (whose transcription
    tests/eval/test_report.py checks)."""
    from flava_jax.eval.paper_results import PAPER

    page = (REPO / "docs" / "evaluation.md").read_text()
    section = page[page.index("## Results"):]
    rows = re.findall(r"^\| (10M|100M) \| (0|40K|400K|4M) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                      section, flags=re.M)
    assert len(rows) == 8
    for text, images, full_pppl, full_blimp, half_pppl, half_blimp in rows:
        full, half = PAPER["full"][f"{text}/{images}"], PAPER["half"][f"{text}/{images}"]
        assert (full.pppl, full.blimp, half.pppl, half.blimp) == tuple(
            map(float, (full_pppl, full_blimp, half_pppl, half_blimp))), (text, images)


def _blank(match: re.Match) -> str:
    return re.sub(r"[^\n]", " ", match.group())


def _prose(text: str, code_spans: bool = False) -> str:
    """Markdown with its fenced code blocks (and inline code spans, unless `code_spans`) blanked out, lines and
    offsets kept."""
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```", _blank, text, flags=re.S | re.M)
    return text if code_spans else re.sub(r"`[^`\n]*`", _blank, text)


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text: lowercased, punctuation other than '-' and '_'
    dropped, spaces to '-'; a repeated heading's anchor gets -1, -2 ..."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", _prose(text, code_spans=True), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def _markdown_texts() -> list[tuple[str, Path, str, str]]:
    """(name, folder its links are relative to, text, the whole page a bare #anchor points into) of every page in
    MARKDOWN and every markdown cell of the notebooks."""
    texts = [(str(page.relative_to(REPO)), page.parent, page.read_text(), page.read_text()) for page in MARKDOWN]
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = [(i, "".join(cell["source"])) for i, cell in enumerate(json.loads(notebook.read_text())["cells"])
                 if cell["cell_type"] == "markdown"]
        whole = "\n\n".join(text for _, text in cells)
        texts += [(f"{notebook.relative_to(REPO)} cell {i}", notebook.parent, text, whole) for i, text in cells]
    return texts


def _broken_links(name: str, folder: Path, text: str, page: str) -> list[str]:
    """Each relative link `[text](path#anchor)` of `text` whose file is missing (or outside the repository), or
    whose anchor names no heading of the Markdown page it points to (a bare `#anchor`: of `page`)."""
    broken = []
    prose = _prose(text)
    for link in re.finditer(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        target = link.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        where = f"{name}:{prose.count(chr(10), 0, link.start()) + 1}: {target}"
        path, _, anchor = target.partition("#")
        file = (folder / path).resolve()
        if path and (not file.exists() or not file.is_relative_to(REPO.resolve())):
            broken.append(f"{where} (no such file)")
        elif anchor and (not path or file.suffix == ".md"):
            if anchor not in _anchors(file.read_text() if path else page):
                broken.append(f"{where} (no heading with this anchor)")
    return broken


def test_markdown_links_resolve() -> None:
    """Every relative link in README, docs/, benchmarks/, launch/ and notebooks/ (their READMEs and the notebooks'
    markdown cells) leads to a file of the repository, and a link into a Markdown page with `#anchor` to one of its
    headings, as GitHub makes anchors: the manual moved out of README into docs/, and its links with it."""
    texts = _markdown_texts()
    assert len(texts) > len(MARKDOWN) and (REPO / "docs" / "model.md") in MARKDOWN
    broken = [line for text in texts for line in _broken_links(*text)]
    assert not broken, "\n".join(broken)


@pytest.mark.xdist_group("repo")
def test_xdist_groups_reach_the_scheduler(request: pytest.FixtureRequest) -> None:
    """Tests marked xdist_group share one worker, and with it the runs and compiles their fixtures make once, only
    when pytest-xdist can tag their ids with the group: pytest 9.2 stopped that without a word, and each worker
    then trained those runs again."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs under README's test command (pytest -n 2, --dist=loadgroup from pytest.ini)")
    assert request.node.nodeid.endswith("@repo"), request.node.nodeid
