"""Compare evaluated runs with the paper across the text x image grid:
`python -m flava_jax.report --results PATH [PATH ...] --out OUT [--label PATH=10M/40K] [--paper auto|full|half]`.

Each PATH is a results.json of `python -m flava_jax.evaluate`, a folder holding one, or a folder whose
subfolders hold them. Each run's grid cell (text words / images, e.g. "10M/40K") is, first found first:
1. the `--label` given for its PATH (or for its results.json or that file's folder);
2. `config.data.text_words` / `config.data.images` of the trainer's run.json, looked for beside results.json, in
   the folder above it, in the export named by results.json's "model", and in the folder above that (the
   workdir, when the export was written inside it); a budget of -1 ("all of it", as configs/debug.py) reads "all";
3. a grid config's name (`10M_40K`, as configs/10M_40K.py) in the results path or the model path;
4. the name of one of the paper's released checkpoints (`bestckpt_half_sized_text10M_vision40K`, or with the
   reference's percentages, `text1_vision1`: text 1% = 10M words, images 1% = 40K) in the model path or Hub id.
The model size (which paper table to compare with) comes from the text encoder's width in run.json or in the
export's config.json (768: full, docs/reference.md#full-size-results; 516: half,
docs/reference.md#half-size-results), else from a released checkpoint's name (`half_sized`, `full_sized`);
`--paper` overrides it. Runs in the same cell are averaged. A run under an image control (run.json's
`config.data.image_control`: noise, shuffled_pairs) is its own cell, labelled "10M/40K+noise", and so is a run whose
images and pairs came from other sources than its text (`config.data.pair_sources`, e.g. CC3M: "10M/40K+pairs=cc3m",
named by the pair stream's first source): each is compared with the text-only cell of its budget in the deltas, with
no paper numbers, and left out of the mixed models.

OUT gets report.md and report.json (BLiMP average, per-phenomenon accuracy and PPPL beside the paper's, in
percent) and blimp_deltas.png: per phenomenon, each cell with images minus the text-only cell of its text budget,
in accuracy points, ours beside the paper's, as the paper's figure shows them.

When some run has ImageNet zero-shot results (`evaluate --tasks=zeroshot`), report.md's "ImageNet zero-shot (MTR)
and retrieval" section gives per cell MTR top-1 / top-5 beside the thesis's (its half-size table is the only one
with MTR; "–" where it has none) and our image-text retrieval recall@1/5/10 both ways with its chance level, all in
percent and averaged over the cell's runs (None unless every run has them; report.json's cells hold them as
"zeroshot" and "retrieval"); mtr.png plots MTR as bars, ours beside the paper's, chance (0.1% / 0.5%) as a line.
Without zero-shot results report.md says so in one line.

"Mixed linear models" gives the paper's analysis (flava_jax/eval/regression.py): Score ~ Words + Images and
Score ~ Words + MTR, and within each text budget the model without Words, over the BLiMP category scores per cell,
category as a random intercept: the thesis's published coefficients, the same models refitted on the paper's own
table, and ours; a model that cannot be fitted (a predictor with one value, MTR missing) gets a line saying why.
The fits need statsmodels (`pip install -e '.[report]'`); without it the section says so and shows the published
numbers alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from absl import app, flags

from flava_jax.common.blimp import PHENOMENA
from flava_jax.eval.paper_results import COLUMNS, PAPER, REGRESSION_CAVEATS, REGRESSION_SOURCE, REGRESSIONS, PaperCell

SIZES_BY_WIDTH = {768: "full", 516: "half"}  # text encoder hidden size -> the paper table of that size
# where each size's paper table is described, cited as report.json's "paper_section"
SECTIONS = {"full": "docs/reference.md#full-size-results", "half": "docs/reference.md#half-size-results"}
AVERAGE = "average"
SHORT = {name: short for short, name in COLUMNS.items()} | {AVERAGE: "average"}
_BUDGET = r"(?:\d+(?:\.\d+)?[KM]?|all)"
_CELL = re.compile(rf"({_BUDGET})[_/]({_BUDGET})", re.IGNORECASE)
# The released checkpoints' names: bestckpt_{half,full}_sized_text{t}_vision{v}, t and v budgets or percentages.
_RELEASED = re.compile(r"(?:(half|full)_sized_)?text(\d+(?:\.\d+)?[KM]?)_vision(\d+(?:\.\d+)?[KM]?)",
                       re.IGNORECASE)
# The reference's percentages of WiT's train split (docs/reference.md#budgets): text 1% ~ 10M words, images 1% ~ 40K.
PERCENT_UNITS = (10_000_000, 40_000)
ALL = -1  # a budget of -1 (the data config's "all of it", as configs/debug.py uses) is written "all"
_UNITS = {"": 1, "K": 1_000, "M": 1_000_000}
ZEROSHOT_CHANCE = {"top1": 0.1, "top5": 0.5}  # percent: ImageNet-1k zero-shot at chance (1000 classes)
RETRIEVAL = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")  # results.json's retrieval recalls
RECALLS = ("r1", "r5", "r10")  # results.json's retrieval chance levels


@dataclasses.dataclass(frozen=True)
class Run:
    """One evaluated run: its results.json, grid cell, model size (None: unknown) and how the cell was found."""

    source: Path
    cell: str
    size: str | None
    found_by: str
    results: dict[str, Any]


# ------------------------------------------------------------------------------------------------ grid cells
def budget(text: str) -> int:
    """"40K" -> 40000, "10M" -> 10000000, "0" -> 0, "all" -> -1."""
    if text.strip().lower() == "all":
        return ALL
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KM]?)", text.strip().upper())
    if not match:
        raise ValueError(f"not a budget like 10M, 40K or 0: {text!r}")
    return round(float(match[1]) * _UNITS[match[2]])


def budget_label(n: int) -> str:
    """40000 -> "40K", 10000000 -> "10M", -1 -> "all": the paper's way of writing budgets."""
    if n == ALL:
        return "all"
    for unit in ("M", "K"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def cell_label(text_words: int, images: int) -> str:
    return f"{budget_label(text_words)}/{budget_label(images)}"


def parse_cell(label: str) -> tuple[int, int]:
    """"10M/40K" (or "10M_40K", or a control's "10M/40K+noise") -> (text words, images)."""
    match = _CELL.fullmatch(label.strip().split("+")[0])
    if not match:
        raise ValueError(f"not a grid cell like 10M/40K: {label!r}")
    return budget(match[1]), budget(match[2])


def control_of(label: str) -> str:
    """The image control of a cell label ("10M/40K+noise" -> "noise"; "none" without one)."""
    return label.split("+", 1)[1] if "+" in label else "none"


def with_control(label: str, control: str | None) -> str:
    """A cell label for runs under an image control (data.image_control): "10M/40K+noise"; "none" adds nothing."""
    return label if control in (None, "none") else f"{label}+{control}"


def other_sources(data: Mapping[str, Any]) -> str | None:
    """"pairs=<name>" for a run whose image or pair stream came from other sources than its text (run.json's
    config.data.image_sources / pair_sources, flava_jax/data/stream_sources.py), named by the pair stream's first
    source (its file or folder name); None otherwise."""
    text = data.get("text_sources") or data.get("sources") or []
    fed = [data.get(key) or text for key in ("image_sources", "pair_sources")]
    if all(list(specs) == list(text) for specs in fed):
        return None
    return f"pairs={PurePath(str(fed[1][0]).rstrip('/')).name}"


def cell_order(label: str) -> tuple[float, float, str]:
    """A sort key: text budget, then images, "all" after every number, then the control (none first)."""
    text, images = (math.inf if n == ALL else n for n in parse_cell(label))
    return text, images, "" if control_of(label) == "none" else control_of(label)


# ---------------------------------------------------------------------------------------------- loading runs
def find_results(paths: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """(the PATH given, a results.json) for each results.json a PATH names, holds, or holds one folder down."""
    found = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            files = [path]
        else:
            files = [path / "results.json"] if (path / "results.json").is_file() else \
                sorted(path.glob("*/results.json"))
        if not files:
            raise FileNotFoundError(f"--results {given}: no results.json there or one folder down")
        found += [(str(given), f) for f in files]
    return found


def _run_files(source: Path, results: Mapping[str, Any]) -> list[Path]:
    """Where a run.json may be: beside results.json, above it, in the export and above the export."""
    folders = [source.parent, source.parent.parent]
    if results.get("model"):
        export = Path(results["model"])
        folders += [export, export.parent]
    return [folder / "run.json" for folder in folders]


def _size(width: Any) -> str | None:
    return SIZES_BY_WIDTH.get(width) if isinstance(width, int) else None


def identify(given: str, source: Path, results: Mapping[str, Any],
             labels: Mapping[str, str]) -> tuple[str, str | None, str]:
    """(grid cell, model size or None, how the cell was found) of one run, by the rule in the module docstring."""
    export = results.get("export") or results.get("model")
    export_config = Path(export or "") / "config.json"
    size = None
    if export and export_config.is_file():
        size = _size(json.loads(export_config.read_text()).get("text_config", {}).get("hidden_size"))
    for key in (given, str(source), str(source.parent)):
        if key in labels:
            return cell_label(*parse_cell(labels[key])), size, "--label"
    for run_file in _run_files(source, results):
        if run_file.is_file():
            run = json.loads(run_file.read_text())
            data = run.get("config", {}).get("data", {})
            if "text_words" in data and "images" in data:
                size = _size(run.get("model", {}).get("text_config", {}).get("hidden_size")) or size
                cell = with_control(cell_label(int(data["text_words"]), int(data["images"])), data.get("image_control"))
                return with_control(cell, other_sources(data)), size, str(run_file)
    for text in (str(source), str(results.get("model", ""))):
        for match in _CELL.finditer(text):
            if match[1].upper().endswith("M"):  # a text budget: 10M_40K, not a date or a step
                return cell_label(budget(match[1]), budget(match[2])), size, f"the path ({match[0]})"
    for text in (str(results.get("model", "")), str(source)):
        if match := _RELEASED.search(text):
            return _released_cell(match[2], match[3]), size or (match[1] or "").lower() or None, \
                f"a released checkpoint's name ({match[0]})"
    raise ValueError(f"{source}: cannot tell its grid cell (no --label, no run.json with config.data.text_words and "
                     f"images beside it or its export, no name like 10M_40K in its path); pass --label "
                     f"{given}=10M/40K")


def _released_cell(text: str, images: str) -> str:
    """The grid cell of a released checkpoint's `text{t}_vision{v}`: budgets (10M, 40K) as they are, bare numbers
    as the reference's percentages."""
    return cell_label(*(budget(value) if value[-1].isalpha() else round(float(value) * unit)
                        for value, unit in zip((text, images), PERCENT_UNITS, strict=True)))


def load_runs(paths: Sequence[str | Path], labels: Mapping[str, str] | None = None) -> list[Run]:
    """Every run the PATHs hold, each with its grid cell; runs without BLiMP results are refused."""
    runs = []
    for given, source in find_results(paths):
        results = json.loads(source.read_text())
        if "blimp" not in results:
            raise ValueError(f"{source} has no BLiMP results (evaluate with --tasks=blimp)")
        runs.append(Run(source, *identify(given, source, results, labels or {}), results))
    return runs


def paper_size(runs: Sequence[Run], requested: str = "auto") -> str:
    """The paper table to compare with: `requested`, or the runs' size (full when none is known)."""
    if requested != "auto":
        return requested
    sizes = {run.size for run in runs if run.size}
    if len(sizes) > 1:
        raise ValueError(f"the runs have different model sizes {sorted(sizes)}; pick a table with --paper")
    return sizes.pop() if sizes else "full"


# -------------------------------------------------------------------------------------------------- scores
def our_cells(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Per cell (grid order), the mean over its runs, in percent: BLiMP average, phenomena, within-word-l2r BLiMP
    (None without), and PPPL (None without)."""
    cells: dict[str, dict[str, Any]] = {}
    for cell in sorted({run.cell for run in runs}, key=cell_order):
        group = [run.results for run in runs if run.cell == cell]
        cells[cell] = {
            "scores": {AVERAGE: 100 * float(np.mean([r["blimp"]["accuracy"] for r in group]))}
            | {name: 100 * float(np.mean([r["blimp"]["phenomena"][name] for r in group]))
               for name in PHENOMENA if all(name in r["blimp"]["phenomena"] for r in group)},
            "within_word_l2r": _mean([r.get("blimp_within_word_l2r", {}).get("accuracy") for r in group], 100),
            "pppl": _mean([r.get("pppl", {}).get("pppl") for r in group]),
            "zeroshot": _percent_means([r.get("zeroshot") for r in group], ZEROSHOT_CHANCE),
            "retrieval": _retrieval([r.get("retrieval") for r in group]),
            "runs": [str(run.source) for run in runs if run.cell == cell]}
    return cells


def _percent_means(entries: list[Mapping[str, float] | None], keys: Iterable[str]) -> dict[str, float] | None:
    """Per key, the mean of the entries' fractions in percent; None unless every run has an entry."""
    return None if any(e is None for e in entries) else {k: _mean([e[k] for e in entries], 100) for k in keys}


def _retrieval(entries: list[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The retrieval recalls' means in percent with their chance levels; None unless every run has retrieval."""
    means = _percent_means(entries, RETRIEVAL)
    return None if means is None else means | {"chance": _percent_means([e["chance"] for e in entries], RECALLS)}


def _mean(values: list[float | None], scale: float = 1.0) -> float | None:
    """The mean of the values, None unless every run has one."""
    return None if any(v is None for v in values) else scale * float(np.mean(values))


def paper_cells(size: str) -> dict[str, dict[str, float]]:
    """The paper's scores per cell in the same layout as `our_cells(...)[cell]["scores"]`."""
    return {cell: _paper_scores(c) for cell, c in PAPER[size].items()}


def _paper_scores(cell: PaperCell) -> dict[str, float]:
    return {AVERAGE: cell.blimp} | cell.phenomena


def paper_mtr(cell: str) -> dict[str, float] | None:
    """The thesis's MTR top-1 / top-5 (percent) of a cell, from the half-size table (the only one with MTR)."""
    extra = PAPER["half"][cell].extra if cell in PAPER["half"] else {}
    return {key: extra[f"mtr_{key}"] for key in ZEROSHOT_CHANCE} if "mtr_top1" in extra else None


def deltas(cells: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per cell with images, each score minus that of the text-only cell of the same text budget (accuracy points);
    cells whose text-only cell is missing are left out."""
    out = {}
    for cell, scores in cells.items():
        text, images = parse_cell(cell)
        baseline = cells.get(cell_label(text, 0))
        if images != 0 and baseline is not None:
            out[cell] = {name: scores[name] - baseline[name] for name in scores if name in baseline}
    return out


# ----------------------------------------------------------------------------------------------- the report
def write_report(runs: Sequence[Run], out: str | Path, paper: str = "auto") -> dict[str, Any]:
    """report.json, report.md, blimp_deltas.png (and mtr.png with zero-shot results) in `out`; returns what
    report.json holds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = paper_size(runs, paper)
    ours, theirs = our_cells(runs), paper_cells(size)
    ours_deltas = deltas({cell: c["scores"] for cell, c in ours.items()})
    paper_deltas = deltas(theirs)
    report = {
        "paper_size": size, "paper_section": SECTIONS[size], "unit": "percent",
        "runs": [{"results": str(r.source), "cell": r.cell, "size": r.size, "cell_from": r.found_by} for r in runs],
        "cells": {cell: {"ours": c, "paper": _paper_entry(PAPER[size].get(cell)), "paper_mtr": paper_mtr(cell)}
                  for cell, c in ours.items()},
        "deltas": {"ours": ours_deltas, "paper": paper_deltas},
        "regression": regressions(ours, size)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_deltas(ours_deltas, paper_deltas, out / "blimp_deltas.png", size)
    if any(c["zeroshot"] for c in ours.values()):
        plot_mtr({cell: c["zeroshot"] for cell, c in ours.items() if c["zeroshot"]},
                 {cell: m for cell in PAPER["half"] if (m := paper_mtr(cell))}, out / "mtr.png")
    (out / "report.md").write_text(_markdown(report, ours, size))
    return report


def regressions(ours: Mapping[str, Mapping[str, Any]], size: str) -> dict[str, Any]:
    """The mixed models (flava_jax/eval/regression.py) fitted on our cells and on the paper's table of `size`, beside
    the published ones; "unavailable" says why the fits are missing when statsmodels is not installed."""
    from flava_jax.eval import regression  # imports this module's grid-cell helpers, so not at the top

    published = {model: {name: dataclasses.asdict(c) for name, c in coefficients.items()}
                 for model, coefficients in REGRESSIONS.get(size, {}).items()}
    entry = {"transform": regression.TRANSFORM, "mtr_without_images": regression.CHANCE_TOP1,
             "published": published, "published_source": REGRESSION_SOURCE, "caveat": REGRESSION_CAVEATS.get(size),
             "paper_fit": None, "ours": None, "unavailable": None}
    rows = regression.table_rows({cell: c["scores"] for cell, c in ours.items()},
                                 {cell: (c["zeroshot"] or {}).get("top1") for cell, c in ours.items()})
    try:
        entry["paper_fit"], entry["ours"] = regression.fit_paper(size), regression.fit_models(rows)
    except ImportError as e:
        entry["unavailable"] = f"{(e.name or 'statsmodels').split('.')[0]} is not installed: pip install -e '.[report]'"
    return entry


def _paper_entry(cell: PaperCell | None) -> dict[str, Any] | None:
    if cell is None:
        return None
    return {"scores": _paper_scores(cell), "pppl": cell.pppl, "best_step": cell.best_step,
            **cell.extra}


def _fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    return "–" if value is None else f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _markdown(report: Mapping[str, Any], ours: Mapping[str, Any], size: str) -> str:
    lines = [f"# Runs against the paper ({size} size, {report['paper_section']})", "",
             "Accuracies in percent; the paper's numbers are its best checkpoints (minimum PPPL). PPPL: the "
             "reference's sentence-averaged variant (ours on the texts `evaluate --tasks=pppl` was given).", "",
             "## BLiMP average and PPPL", ""]
    with_l2r = any(c["within_word_l2r"] is not None for c in ours.values())
    header = "| cell | runs | BLiMP (ours) | BLiMP (paper) | ours − paper | PPPL (ours) | PPPL (paper) |"
    lines += [header + (" BLiMP within-word-l2r (ours) |" if with_l2r else ""),
              "|---" * (header.count("|") - 1 + with_l2r) + "|"]
    for cell, c in ours.items():
        paper = report["cells"][cell]["paper"]
        average, theirs = c["scores"][AVERAGE], paper["scores"][AVERAGE] if paper else None
        row = (f"| {cell} | {len(c['runs'])} | {_fmt(average)} | {_fmt(theirs)} | "
               f"{_fmt(None if theirs is None else average - theirs, sign=True)} | {_fmt(c['pppl'])} | "
               f"{_fmt(paper['pppl'] if paper else None)} |")
        lines.append(row + (f" {_fmt(c['within_word_l2r'])} |" if with_l2r else ""))
    names = [n for n in PHENOMENA if any(n in c["scores"] for c in ours.values())]
    lines += ["", "## BLiMP per phenomenon: ours (paper)", "", "| cell | " + " | ".join(SHORT[n] for n in names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for cell, c in ours.items():
        paper = report["cells"][cell]["paper"]
        lines.append(f"| {cell} | " + " | ".join(
            f"{_fmt(c['scores'].get(n), 1)} ({_fmt(paper['scores'][n], 1) if paper else '–'})" for n in names) + " |")
    lines += ["", "## Deltas against text-only (accuracy points, same text budget, 0 images)", "",
              f"![BLiMP deltas, ours and the paper's ({size} size)](blimp_deltas.png)", ""]
    if not report["deltas"]["ours"]:
        lines += ["No deltas of ours: no run has both a cell with images and the text-only cell of its text budget.",
                  ""]
    lines += _mtr_section(report, ours) + _regression_section(report["regression"], size)
    lines += ["## Runs", "", "| results | cell | found by | size |", "|---|---|---|---|"]
    lines += [f"| {r['results']} | {r['cell']} | {r['cell_from']} | {r['size'] or 'unknown'} |"
              for r in report["runs"]]
    return "\n".join(lines) + "\n"


def _mtr_section(report: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """MTR beside the thesis's and our retrieval recalls per cell, or one line when no run has zero-shot results."""
    if not any(c["zeroshot"] for c in ours.values()):
        return ["No run has ImageNet zero-shot (MTR) results (evaluate with --tasks=zeroshot); retrieval, if any, is "
                "in report.json.", ""]
    lines = ["## ImageNet zero-shot (MTR) and retrieval", "",
             "Percent, means over each cell's runs. MTR: ImageNet-1k zero-shot top-1 / top-5 (chance "
             f"{ZEROSHOT_CHANCE['top1']} / {ZEROSHOT_CHANCE['top5']}) beside the thesis's half-size table's (the only "
             "one with MTR). Retrieval: recall@K of image-to-text (I→T) and text-to-image (T→I) over the evaluated "
             "pairs, beside its chance level K / pairs.", "", "![MTR, ours and the paper's](mtr.png)", "",
             "| cell | runs | MTR top-1 (ours) | MTR top-1 (paper) | MTR top-5 (ours) | MTR top-5 (paper) | "
             "I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | chance R@1 / R@5 / R@10 |",
             "|---" * 13 + "|"]
    for cell, c in ours.items():
        zeroshot, paper = c["zeroshot"] or {}, report["cells"][cell]["paper_mtr"] or {}
        retrieval = c["retrieval"] or {}
        chance = retrieval.get("chance") or {}
        lines.append(f"| {cell} | {len(c['runs'])} | " + " | ".join(
            [_fmt(source.get(key)) for key in ZEROSHOT_CHANCE for source in (zeroshot, paper)]
            + [_fmt(retrieval.get(key)) for key in RETRIEVAL]
            + [" / ".join(_fmt(chance.get(key)) for key in RECALLS)]) + " |")
    return lines + [""]


def _regression_section(entry: Mapping[str, Any], size: str) -> list[str]:
    """The mixed models' coefficients: published, refitted on the paper's table, ours; a line per model not fitted."""
    fits = {"paper's table, refitted": entry["paper_fit"] or {}, "ours": entry["ours"] or {}}
    lines = ["## Mixed linear models (the paper's analysis)", "",
             f"BLiMP category scores (percent) per cell, category as a random intercept (REML); predictors "
             f"{entry['transform']}; MTR of cells without images: chance ({entry['mtr_without_images']}%). "
             f"Coefficient (standard error, p). Published: {entry['published_source']}, {size} size"
             + (f"; {entry['caveat']}" if entry["caveat"] else "") + f". Refitted: the same models on the {size}-size "
             "table above (flava_jax/eval/regression.py says why they differ).", ""]
    if entry["unavailable"]:
        lines += [f"Not fitted: {entry['unavailable']}.", ""]
    models = list(dict.fromkeys([*fits["paper's table, refitted"], *fits["ours"], *entry["published"]]))
    lines += ["| model | predictor | published | " + " | ".join(fits) + " |", "|---" * (3 + len(fits)) + "|"]
    for model in models:
        predictors = next((f[model]["predictors"] for f in fits.values() if model in f),
                          list(entry["published"].get(model, {})))
        for name in predictors:
            published = entry["published"].get(model, {}).get(name)
            cells = [_coefficient(f.get(model), name) for f in fits.values()]
            lines.append(f"| {model} | {name} | {_published(published)} | " + " | ".join(cells) + " |")
    notes = [f"- {model} ({source}): not fitted: {f[model]['not_fitted']}." for source, f in fits.items()
             for model in models if "not_fitted" in f.get(model, {})]
    notes += [f"- {model} ({source}): {'; '.join(f[model]['warnings'])}." for source, f in fits.items()
              for model in models if f.get(model, {}).get("warnings")]
    return lines + [""] + (notes + [""] if notes else [])


def _coefficient(fit: Mapping[str, Any] | None, name: str) -> str:
    if fit is None:
        return "–"
    if "not_fitted" in fit:
        return "not fitted"
    c = fit["coefficients"][name]
    return f"{c['coef']:+.2f} ({_fmt(c['se'])}, p {_p(c['p'])})" + ("" if fit["converged"] else " not converged")


def _published(c: Mapping[str, Any] | None) -> str:
    if c is None:
        return "–"
    p = c["p"] if c["p"].startswith("<") else f"= {c['p']}"
    return f"{c['coef']:+.2f} ({_fmt(c['se'])}, p {p})"


def _p(p: float | None) -> str:
    """A p-value as the summaries print it: "< .001" or "= .290"."""
    return "–" if p is None else "< .001" if p < 0.001 else f"= {p:.3f}".replace("0.", ".", 1)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mtr(ours: Mapping[str, Mapping[str, float]], paper: Mapping[str, Mapping[str, float]], path: Path) -> None:
    """MTR top-1 and top-5 per cell as bars, ours beside the paper's (half size), chance as a dashed line."""
    plt = _pyplot()
    cells = sorted(set(ours) | set(paper), key=cell_order)
    x = np.arange(len(cells))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(cells), 4.5), constrained_layout=True)
    for ax, key in zip(axes, ZEROSHOT_CHANCE, strict=True):
        for offset, (label, source) in zip((-0.2, 0.2), (("ours", ours), ("paper (half size)", paper)), strict=True):
            ax.bar(x + offset, [source.get(cell, {}).get(key, np.nan) for cell in cells], 0.4, label=label)
        ax.axhline(ZEROSHOT_CHANCE[key], color="grey", linestyle="--", label=f"chance ({ZEROSHOT_CHANCE[key]}%)")
        ax.set_xticks(x, cells, rotation=45, ha="right")
        ax.set_ylabel("percent")
        ax.set_title(f"ImageNet zero-shot {key.replace('top', 'top-')} (MTR)")
        ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_deltas(ours: Mapping[str, Mapping[str, float]], paper: Mapping[str, Mapping[str, float]], path: Path,
                size: str) -> None:
    """Two heatmaps side by side (ours, the paper's), rows = cells with images, columns = the BLiMP average and the
    12 phenomena, one diverging colour scale centred on 0 for both."""
    plt = _pyplot()
    rows = sorted(set(ours) | set(paper), key=cell_order)
    columns = [AVERAGE, *PHENOMENA]
    grids = [np.array([[d.get(cell, {}).get(name, np.nan) for name in columns] for cell in rows]).reshape(
        len(rows), len(columns)) for d in (ours, paper)]
    finite = np.concatenate([g[np.isfinite(g)] for g in grids])
    limit = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-6)
    fig, axes = plt.subplots(1, 2, figsize=(16, 1.5 + 0.55 * max(len(rows), 1)), constrained_layout=True)
    for ax, grid, title in zip(axes, grids, ("ours", f"paper ({size} size)"), strict=True):
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(columns)), [SHORT[c] for c in columns], rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(f"BLiMP minus text-only, accuracy points: {title}")
        for (i, j), value in np.ndenumerate(grid):
            color = "grey" if np.isnan(value) else "white" if abs(value) > 0.6 * limit else "black"
            ax.text(j, i, "n/a" if np.isnan(value) else f"{value:+.1f}", ha="center", va="center", fontsize=8,
                    color=color)
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy points")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """The command line; flags are defined here so that importing this module defines none."""
    results = flags.DEFINE_multi_string("results", None, "A results.json, a folder holding one, or a folder whose "
                                        "subfolders hold them; repeat the flag, or put more PATHs after the flags.")
    out = flags.DEFINE_string("out", None, "Where report.md, report.json, blimp_deltas.png and mtr.png go.")
    label = flags.DEFINE_multi_string("label", [], "PATH=CELL: the grid cell of a --results PATH, e.g. "
                                      "runs/a=10M/40K (repeat the flag for more).")
    paper = flags.DEFINE_enum("paper", "auto", ["auto", "full", "half"], "The paper table to compare with (auto: "
                              "the runs' model size, full when unknown).")

    def run(argv: list[str]) -> None:
        paths = [*(results.value or []), *argv[1:]]  # a shell glob after --results leaves its other PATHs here
        if not paths or not out.value:
            raise app.UsageError("--results and --out are required")
        bad = [item for item in label.value if "=" not in item]
        if bad:
            raise app.UsageError(f"--label {bad[0]}: expected PATH=CELL, e.g. runs/a=10M/40K")
        try:
            runs = load_runs(paths, dict(item.rsplit("=", 1) for item in label.value))
            write_report(runs, out.value, paper.value)
        except (ValueError, FileNotFoundError) as e:
            raise app.UsageError(str(e)) from e
        print(f"wrote {Path(out.value) / 'report.md'}, report.json and its plots ({len(runs)} runs)")

    app.run(run)


if __name__ == "__main__":
    main()
