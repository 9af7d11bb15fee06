"""The report across runs: the paper's numbers as transcribed, grid cells found three ways, deltas against the
text-only cell checked by hand, and the command line's files.

The transcription check reads ../shared/reference/paper_reference.md, the shared reference notes that CI has beside
the checkout (an independent source for flava_jax/eval/paper_results.py), and skips where that file is absent, as
in a user's clone; the repo's own notes on those tables are docs/reference.md#results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flava_jax.common.blimp import PHENOMENA
from flava_jax.eval.paper_results import COLUMNS, IMAGE_BUDGETS, PAPER, TEXT_BUDGETS
from flava_jax.eval.report import load_runs, write_report
from tests.configs import REPO

REFERENCE = REPO.parent / "shared" / "reference" / "paper_reference.md"


def _markdown_tables(section: str) -> list[list[list[str]]]:
    """The tables under `section` ("### 6.2 ...") of the shared reference notes (REFERENCE, not docs/reference.md),
    as rows of cells (separator row dropped)."""
    body = REFERENCE.read_text().split(f"\n{section}")[1].split("\n### ")[0]
    tables: list[list[list[str]]] = [[]]
    for line in body.splitlines():
        if line.startswith("|"):
            tables[-1].append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif tables[-1]:
            tables.append([])
    return [[row for row in t if not set("".join(row)) <= set("-")] for t in tables if t]


@pytest.mark.parametrize(("size", "section"), [("full", "### 6.2"), ("half", "### 6.3")])
def test_the_paper_tables_match_the_reference_notes(size: str, section: str) -> None:
    if not REFERENCE.is_file():
        pytest.skip(f"needs {REFERENCE} (the shared reference notes)")
    summary, phenomena = _markdown_tables(section)
    assert phenomena[0] == ["config", *COLUMNS] and set(COLUMNS.values()) == set(PHENOMENA)
    table = PAPER[size]
    assert sorted(table) == sorted(f"{t}/{i}" for t in TEXT_BUDGETS for i in IMAGE_BUDGETS)
    for text, images, step, pppl, blimp, extra in summary[1:]:
        cell = table[f"{text}/{images}"]
        assert cell.best_step == int(step.split()[0])  # "17435 (cap)"
        assert cell.pppl == float(pppl)
        assert cell.blimp == float(blimp.split("**")[1] if "**" in blimp else blimp)
        if size == "full":
            assert cell.extra == {"val_mlm_loss": float(extra)}
        else:
            top1, top5 = (None, None) if extra == "–" else (float(x) for x in extra.split("/"))
            assert cell.extra == ({} if top1 is None else {"mtr_top1": top1, "mtr_top5": top5})
    assert len(summary) - 1 == len(phenomena) - 1 == len(table)
    for config, *values in phenomena[1:]:
        assert table[config].phenomena == {COLUMNS[c]: float(v) for c, v in zip(COLUMNS, values, strict=True)}


def _results(anaphor: float, others: float, model: str = "") -> dict[str, Any]:
    phenomena = {name: anaphor if name == "anaphor_agreement" else others for name in PHENOMENA}
    return {"model": model, "blimp": {"accuracy": float(np.mean(list(phenomena.values()))), "phenomena": phenomena,
                                      "paradigms": {}, "pairs": 12, "skipped_lines": 0},
            "pppl": {"pppl": 20.0 + anaphor, "pppl_token_weighted": 21.0, "texts": 3}}


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flava_jax.report", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)


def _write(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Five runs: 10M/0 named by its path, 10M/40K by its workdir's run.json (half size), two 10M/4M that need a
    --label, and 100M/40K (by path) whose text-only cell is missing."""
    root = tmp_path / "runs"
    _write(root / "10M_0" / "results.json", _results(0.80, 0.60))
    export = root / "a" / "export"
    _write(export / "config.json", {"text_config": {"hidden_size": 516}})
    _write(root / "a" / "run.json", {"model": {"text_config": {"hidden_size": 516}},
                                     "config": {"data": {"text_words": 10_000_000, "images": 40_000}}})
    _write(root / "a" / "eval" / "results.json", _results(0.70, 0.65, str(export)))
    _write(root / "b1" / "results.json", _results(0.50, 0.50))
    _write(root / "b2" / "results.json", _results(0.60, 0.60))
    _write(root / "100M_40K" / "results.json", _results(0.90, 0.90))
    return root


def test_deltas_against_text_only_by_hand(runs: Path, tmp_path: Path) -> None:
    loaded = load_runs([runs / "10M_0", runs / "a" / "eval", runs / "b1", runs / "b2", runs / "100M_40K"],
                       {str(runs / "b1"): "10M/4M", str(runs / "b2"): "10m_4m"})
    assert [(r.cell, r.size) for r in loaded] == [("10M/0", None), ("10M/40K", "half"), ("10M/4M", None),
                                                  ("10M/4M", None), ("100M/40K", None)]
    assert loaded[1].found_by == str(runs / "a" / "run.json") and loaded[0].found_by.startswith("the path")
    report = write_report(loaded, tmp_path / "out")
    assert report["paper_size"] == "half"  # from the one run whose size is known

    ours = report["deltas"]["ours"]
    assert set(ours) == {"10M/40K", "10M/4M"}  # 100M/40K has no 100M/0 to compare with
    baseline = (80 + 11 * 60) / 12
    assert ours["10M/40K"]["anaphor_agreement"] == pytest.approx(70 - 80)
    assert ours["10M/40K"]["binding"] == pytest.approx(65 - 60)
    assert ours["10M/40K"]["average"] == pytest.approx((70 + 11 * 65) / 12 - baseline)
    # Two runs in 10M/4M: their mean, 55 everywhere.
    assert ours["10M/4M"]["anaphor_agreement"] == pytest.approx(55 - 80)
    assert ours["10M/4M"]["quantifiers"] == pytest.approx(55 - 60)
    assert ours["10M/4M"]["average"] == pytest.approx(55 - baseline)
    assert report["cells"]["10M/4M"]["ours"]["pppl"] == pytest.approx(20.55)

    assert report["paper_section"] == "docs/reference.md#half-size-results"
    paper = report["deltas"]["paper"]  # half size
    assert set(paper) == {"10M/40K", "10M/400K", "10M/4M", "100M/40K", "100M/400K", "100M/4M"}
    assert paper["10M/40K"]["anaphor_agreement"] == pytest.approx(82.77 - 72.90)
    assert paper["100M/4M"]["average"] == pytest.approx(67.09 - 70.51)
    assert report["cells"]["10M/0"]["paper"]["scores"]["average"] == 63.62


def test_the_command_line_writes_the_files(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    # Two PATHs after --results, as a shell glob gives them; --label repeated.
    result = _report("--results", str(runs), str(runs / "a" / "eval"), f"--out={out}", "--paper=full",
                     f"--label={runs / 'b1' / 'results.json'}=10M/4M", "--label", f"{runs / 'b2'}=10M/4M")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["paper_size"] == "full" and len(report["runs"]) == 5
    page, anchor = report["paper_section"].split("#")
    headings = [line.lstrip("#").strip().lower().replace(" ", "-") for line in (REPO / page).read_text().splitlines()
                if line.startswith("#")]
    assert anchor in headings, f"report.json cites {report['paper_section']}, not a heading of {page}"
    markdown = (out / "report.md").read_text()
    assert "| 10M/40K | 1 | 65.42 | 63.98 | +1.44 |" in markdown
    assert "| 10M/0 | 80.0 (76.3) |" in markdown and "![BLiMP deltas" in markdown
    assert (out / "blimp_deltas.png").stat().st_size > 10_000


def test_a_run_without_a_cell_is_refused_with_a_hint(tmp_path: Path) -> None:
    _write(tmp_path / "somewhere" / "results.json", _results(0.5, 0.5))
    result = _report(f"--results={tmp_path / 'somewhere'}", f"--out={tmp_path / 'out'}")
    assert result.returncode != 0 and "pass --label" in result.stderr, result.stderr[-2000:]
    with pytest.raises(ValueError, match="pass --label"):
        load_runs([tmp_path / "somewhere"])


def test_a_run_on_all_of_the_sample_has_no_deltas_but_a_report(tmp_path: Path) -> None:
    """configs/debug.py trains on all of the bundled sample (budgets -1): its cell is all/all, outside the grid."""
    _write(tmp_path / "work" / "run.json", {"model": {"text_config": {"hidden_size": 32}},
                                            "config": {"data": {"text_words": -1, "images": -1}}})
    _write(tmp_path / "work" / "eval" / "results.json", _results(0.5, 0.5))
    result = _report(f"--results={tmp_path / 'work' / 'eval'}", f"--out={tmp_path / 'report'}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["runs"][0]["cell"] == "all/all" and report["paper_size"] == "full"
    assert report["deltas"]["ours"] == {} and report["cells"]["all/all"]["paper"] is None
    assert "No deltas of ours" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "blimp_deltas.png").stat().st_size


def _with_images(results: dict[str, Any], top1: float, top5: float, i2t: tuple[float, float, float]) -> dict[str, Any]:
    """`results` with ImageNet zero-shot results and retrieval over 1000 pairs (text-to-image: i2t + 0.01 each)."""
    recalls = {f"i2t_r{k}": r for k, r in zip((1, 5, 10), i2t, strict=True)}
    recalls |= {f"t2i_r{k}": r + 0.01 for k, r in zip((1, 5, 10), i2t, strict=True)}
    return results | {
        "zeroshot": {"top1": top1, "top5": top5, "images": 50_000, "classes": 1000, "templates": 80,
                     "special_tokens": False, "layout": "imagefolder", "skipped": {"unreadable": 3}},
        "retrieval": recalls | {"pairs": 1000, "chance": {"r1": 0.001, "r5": 0.005, "r10": 0.01}, "itm_rerank": 0}}


def test_mtr_retrieval_and_regressions_by_hand(tmp_path: Path) -> None:
    """Two 10M/40K runs averaged; one of two 100M/4M runs without zero-shot leaves that cell without MTR."""
    root = tmp_path / "runs"
    _write(root / "10M_0" / "results.json", _results(0.62, 0.60))
    _write(root / "10M_40K_a" / "results.json", _with_images(_results(0.64, 0.61), 0.004, 0.02, (0.01, 0.04, 0.08)))
    _write(root / "10M_40K_b" / "results.json", _with_images(_results(0.60, 0.62), 0.006, 0.03, (0.03, 0.06, 0.10)))
    _write(root / "100M_0" / "results.json", _results(0.80, 0.70))
    _write(root / "100M_4M_a" / "results.json", _with_images(_results(0.78, 0.71), 0.03, 0.09, (0.1, 0.2, 0.3)))
    _write(root / "100M_4M_b" / "results.json", _results(0.82, 0.69))
    report = write_report(load_runs([root]), tmp_path / "out")
    cells = report["cells"]
    assert cells["10M/40K"]["ours"]["zeroshot"] == pytest.approx({"top1": 0.5, "top5": 2.5})
    retrieval = dict(cells["10M/40K"]["ours"]["retrieval"])
    assert retrieval.pop("chance") == pytest.approx({"r1": 0.1, "r5": 0.5, "r10": 1.0})
    assert retrieval == pytest.approx({"i2t_r1": 2.0, "i2t_r5": 5.0, "i2t_r10": 9.0, "t2i_r1": 3.0, "t2i_r5": 6.0,
                                       "t2i_r10": 10.0})
    assert cells["10M/40K"]["paper_mtr"] == {"top1": 0.52, "top5": 2.00}  # the thesis's half-size table
    assert cells["100M/4M"]["ours"]["zeroshot"] is None and cells["100M/4M"]["ours"]["retrieval"] is None
    assert cells["100M/4M"]["paper_mtr"] == {"top1": 2.46, "top5": 7.54}
    assert cells["10M/0"]["ours"]["zeroshot"] is None and cells["10M/0"]["paper_mtr"] is None

    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## ImageNet zero-shot (MTR) and retrieval" in markdown and "![MTR" in markdown
    assert "| 10M/40K | 2 | 0.50 | 0.52 | 2.50 | 2.00 | 2.00 | 5.00 | 9.00 | 3.00 | 6.00 | 10.00 | " \
           "0.10 / 0.50 / 1.00 |" in markdown
    assert "| 100M/4M | 2 | – | 2.46 | – | 7.54 | – | – | – | – | – | – | – / – / – |" in markdown
    assert "| 10M/0 | 1 | – | – | – | – |" in markdown
    assert (tmp_path / "out" / "mtr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Two text budgets and two image budgets: ours fitted beside the published model and the paper's table refitted
    # (7.21: tests/eval/test_regression.py checks it against least squares).
    assert report["paper_size"] == "full"
    assert "## Mixed linear models (the paper's analysis)" in markdown
    assert "| Score ~ Words + Images | Words | +7.59 (0.70, p < .001) | +7.21 (0.69, p < .001) | +" in markdown
    assert "| Score ~ Images (10M words) | Images | +0.01 (–, p = .96) | +0.01 (0.21, p = .964) |" in markdown
    ours = report["regression"]["ours"]["Score ~ Words + Images"]
    assert ours["cells"] == 4 and ours["rows"] == 48 and ours["coefficients"]["Words"]["coef"] > 0
    assert "- Score ~ Words + MTR (ours): not fitted: no zero-shot results (MTR) for 100M/4M." in markdown


def test_without_zero_shot_one_line_and_one_text_budget_fits_no_words(runs: Path, tmp_path: Path) -> None:
    loaded = load_runs([runs / "10M_0", runs / "a" / "eval", runs / "b1", runs / "b2"],
                       {str(runs / "b1"): "10M/4M", str(runs / "b2"): "10M/4M"})
    report = write_report(loaded, tmp_path / "out")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "No run has ImageNet zero-shot (MTR) results (evaluate with --tasks=zeroshot)" in markdown
    assert "## ImageNet zero-shot" not in markdown and not (tmp_path / "out" / "mtr.png").exists()
    assert report["paper_size"] == "half"  # the published half-size numbers, with the thesis's caveat
    assert "| Score ~ Words + MTR | MTR | -1.08 (–, p = .001) |" in markdown and "random noise" in markdown
    assert "- Score ~ Words + Images (ours): not fitted: Words takes 1 value (10M)." in markdown
    assert "coefficients" in report["regression"]["ours"]["Score ~ Images (10M words)"]


def test_without_statsmodels_the_report_shows_the_published_numbers(runs: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "statsmodels.formula.api", None)  # its import now fails
    report = write_report(load_runs([runs / "10M_0", runs / "100M_40K"]), tmp_path / "out")
    assert report["regression"]["paper_fit"] is None and report["regression"]["ours"] is None
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "Not fitted: statsmodels is not installed: pip install -e '.[report]'." in markdown
    assert "| Score ~ Words + Images | Images | -0.27 (0.25, p = .29) | – | – |" in markdown


def test_a_control_run_is_its_own_cell_against_the_real_text_only_one(runs: Path, tmp_path: Path) -> None:
    """A run under data.image_control=noise (from its run.json) is "10M/40K+noise": not averaged with 10M/40K, its
    deltas against 10M/0 by hand, no paper numbers, and out of the mixed models."""
    _write(runs / "n" / "run.json", {"model": {"text_config": {"hidden_size": 516}},
                                     "config": {"data": {"text_words": 10_000_000, "images": 40_000,
                                                         "image_control": "noise"}}})
    _write(runs / "n" / "eval" / "results.json", _results(0.75, 0.62))
    loaded = load_runs([runs / "10M_0", runs / "a" / "eval", runs / "n" / "eval"])
    assert [r.cell for r in loaded] == ["10M/0", "10M/40K", "10M/40K+noise"]
    report = write_report(loaded, tmp_path / "out")
    assert list(report["cells"]) == ["10M/0", "10M/40K", "10M/40K+noise"]
    assert report["cells"]["10M/40K+noise"]["paper"] is None
    assert report["deltas"]["ours"]["10M/40K+noise"]["anaphor_agreement"] == pytest.approx(75 - 80)
    assert report["deltas"]["ours"]["10M/40K+noise"]["binding"] == pytest.approx(62 - 60)
    assert report["deltas"]["ours"]["10M/40K"]["binding"] == pytest.approx(65 - 60)  # unchanged by the control
    from flava_jax.eval.regression import table_rows

    scores = {cell: c["ours"]["scores"] for cell, c in report["cells"].items()}
    assert {row["Images"] for row in table_rows(scores, {})} == {0, 40_000}  # 12 rows each of 10M/0, 10M/40K
    assert len(table_rows(scores, {})) == 24


def test_a_run_with_other_pair_sources_is_its_own_cell(runs: Path) -> None:
    """WiT text with CC3M's images and pairs (run.json's data.pair_sources) is "10M/40K+pairs=cc3m", apart from
    10M/40K; the same sources for every stream (or none given per stream) label nothing."""
    wit = ["/data/wit"]
    for name, data in (("x", {"sources": wit, "image_sources": ["/data/cc3m/"], "pair_sources": ["/data/cc3m/"]}),
                       ("y", {"sources": wit, "text_sources": None, "image_sources": None, "pair_sources": wit})):
        _write(runs / name / "run.json", {"model": {"text_config": {"hidden_size": 516}},
                                          "config": {"data": {"text_words": 10_000_000, "images": 40_000, **data}}})
        _write(runs / name / "eval" / "results.json", _results(0.75, 0.62))
    loaded = load_runs([runs / "a" / "eval", runs / "x" / "eval", runs / "y" / "eval"])
    assert [r.cell for r in loaded] == ["10M/40K", "10M/40K+pairs=cc3m", "10M/40K"]
