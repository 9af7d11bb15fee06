"""The paper's analysis: mixed linear models of BLiMP on the text and image budgets (`python -m flava_jax.report`).

Rows are the BLiMP score of each of the 12 phenomenon categories in each grid cell (per-cell means over runs, in
percent); the category is a random effect (a random intercept: `statsmodels.formula.api.mixedlm(..., groups=category)`,
fitted by REML). Two models, `Score ~ Words + Images` and `Score ~ Words + MTR`, and within each text budget the
model without Words (`Score ~ Images (10M words)`), as the thesis's summaries report them (paper_results.REGRESSIONS).

Decisions:
* Predictors are log10(x + 1e-9), then robust-scaled over the model's rows: (x - median) / IQR, IQR = 75th - 25th
  percentile (numpy's linear interpolation, as sklearn's RobustScaler, whose rule for an IQR of 0 is kept too: the
  values are then centred but not divided). log10 of 0 images is undefined, and the offset decides what the Images
  coefficient means (with 1e-9, no images sit at -9: far below 40K's 4.6). On the paper's full-size table
  (paper_results.FULL) log10(x + 1) gives the 10M-only model Images +0.04 (p = .88), log10(x + 4000) +0.15
  (p = .69), ordinal levels +0.15 (p = .69); only offsets between about 1e-9 and 1e-7 give the published +0.01
  (p = .96), and the thesis's own regression code adds 10e-10, i.e. 1e-9: that is the offset here.
* The published full-size main model is not reproduced from the paper's own table under any transform: its fit gives
  Words +7.21 (SE 0.69) and Images -0.02 (SE 0.25, p = .92) against +7.59 (SE 0.70) and -0.27 (SE 0.25, p = .29).
  In this balanced design the Words estimate is the 100M-minus-10M difference of the cells' mean scores whatever the
  images transform; 7.59 is that difference when 100M/0 scores its uncapped best checkpoint (BLiMP 72.86, step
  23818: docs/reference.md#full-size-results) instead of the table's capped one (71.32), whose per-category scores
  no table holds.
* MTR is ImageNet zero-shot top-1 in percent, transformed as the others. Runs without images get the chance level,
  0.1%: the thesis drew them from noise ~ N(0.1k, 0.01k), which would make the fit depend on a random draw. (On the
  half-size table this gives Words +6.15, MTR -0.86 (p = .007) against the published +6.80, -1.08 (p = .001); an
  MTR left unlogged would give +6.88, -1.04: the thesis may not have logged it.)
* A model is fitted only when each predictor takes at least 2 values, the predictors are not collinear over the
  cells, there are at least 2 categories and (for MTR) every cell with images has zero-shot results; otherwise its
  entry says why. Cells with an "all" budget (configs/debug.py) have no number to regress on and are left out, as
  are runs under an image control (their images are not the budget's).
* REML is optimised by BFGS to a gradient of 1e-10: statsmodels' default tolerance stops about 1e-5 (relative) short
  of the optimum in the standard errors. A fit statsmodels cannot do (scores the predictors explain exactly) is
  "not_fitted" with its error; its warnings (a variance on the boundary, no convergence) are kept with the fit.

statsmodels (and pandas, which it brings) is imported inside the functions: the rest of the report works without it
(`pip install -e '.[report]'`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flava_jax.common.blimp import PHENOMENA
from flava_jax.eval.paper_results import PAPER
from flava_jax.eval.report import ALL, ZEROSHOT_CHANCE, budget_label, control_of, parse_cell

EPS = 1e-9  # added before log10 so that 0 images has a logarithm: the thesis's offset (module docstring)
CHANCE_TOP1 = ZEROSHOT_CHANCE["top1"]  # percent: the MTR of runs without images
TRANSFORM = f"log10(x + {EPS:g}), then (x - median) / IQR over the model's rows"
PREDICTORS = ("Images", "MTR")  # each model: Score ~ Words + one of these (and the subsets without Words)


def robust_scale(x: np.ndarray) -> np.ndarray:
    """(x - median) / IQR with numpy's linear percentiles; an IQR of 0 divides by 1 (sklearn's RobustScaler)."""
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return (x - median) / ((q3 - q1) or 1.0)


def model_key(predictors: Sequence[str], text_words: int | None = None) -> str:
    """"Score ~ Words + Images", or "Score ~ Images (10M words)" for the rows of one text budget."""
    formula = "Score ~ " + " + ".join(predictors)
    return formula if text_words is None else f"{formula} ({budget_label(text_words)} words)"


def table_rows(scores: Mapping[str, Mapping[str, float]], mtr: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """One row per cell and BLiMP category the cell has: Score (percent), Words, Images, MTR (top-1 percent; chance
    for cells without images; None where a cell with images has none). `scores` and `mtr` are keyed by cell."""
    rows = []
    for cell, cell_scores in scores.items():
        words, images = parse_cell(cell)
        if ALL in (words, images) or control_of(cell) != "none":  # a control's images are not the budget's
            continue
        for category in PHENOMENA:
            if category in cell_scores:
                rows.append({"cell": cell, "category": category, "Score": cell_scores[category], "Words": words,
                             "Images": images, "MTR": CHANCE_TOP1 if images == 0 else mtr.get(cell)})
    return rows


def fit(rows: Sequence[Mapping[str, Any]], predictors: Sequence[str], text_words: int | None = None) -> dict[str, Any]:
    """The mixed model Score ~ predictors (random intercept per category, REML) on `rows` (as table_rows gives them;
    only those of `text_words` when given, after scaling over all of them): per predictor its coefficient, standard
    error and p-value, or "not_fitted" saying why."""
    entry = {"model": model_key(predictors, text_words), "predictors": list(predictors)}
    if not rows:
        return entry | {"not_fitted": "no cell with numeric text and image budgets"}
    missing = sorted({r["cell"] for r in rows if any(r[p] is None for p in predictors)})
    if missing:
        return entry | {"not_fitted": f"no zero-shot results (MTR) for {', '.join(missing)}"}
    x = {p: robust_scale(np.log10(np.array([r[p] for r in rows], dtype=float) + EPS)) for p in predictors}
    keep = [text_words is None or r["Words"] == text_words for r in rows]
    x = {p: v[keep] for p, v in x.items()}
    kept = [r for r, k in zip(rows, keep, strict=True) if k]
    reason = _unfittable(kept, x)
    if reason:
        return entry | {"not_fitted": reason}

    import pandas as pd
    import statsmodels.formula.api as smf

    frame = pd.DataFrame({"Score": [r["Score"] for r in kept], "category": [r["category"] for r in kept], **x})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = smf.mixedlm(model_key(predictors), frame, groups=frame["category"]).fit(
                reml=True, method="bfgs", gtol=1e-10)
        except (np.linalg.LinAlgError, ValueError) as e:  # e.g. scores the predictors explain exactly
            return entry | {"not_fitted": f"statsmodels could not fit it ({e})"}
    coefficients = {p: {"coef": float(result.params[p]), "se": _finite(result.bse[p]),
                        "p": _finite(result.pvalues[p])} for p in predictors}
    return entry | {"rows": len(kept), "cells": len({r["cell"] for r in kept}),
                    "categories": int(frame["category"].nunique()), "coefficients": coefficients,
                    "category_variance": float(result.cov_re.iloc[0, 0]), "residual_variance": float(result.scale),
                    "converged": bool(result.converged),
                    "warnings": sorted({str(w.message).splitlines()[0] for w in caught})}


def _finite(x: float) -> float | None:
    """x, or None where a degenerate fit (no residual variance) leaves it NaN: report.json stays valid JSON."""
    return float(x) if np.isfinite(x) else None


def _unfittable(rows: Sequence[Mapping[str, Any]], x: Mapping[str, np.ndarray]) -> str | None:
    """Why the model cannot be fitted on these rows, or None."""
    for name in x:
        distinct = sorted({budget_label(r[name]) if name != "MTR" else f"{r[name]:.2f}%" for r in rows})
        if len(distinct) < 2:
            return f"{name} takes {len(distinct)} value{'s' * (len(distinct) != 1)} ({', '.join(distinct) or '-'})"
    if len({r["category"] for r in rows}) < 2:
        return "fewer than 2 BLiMP categories"
    cells = {r["cell"]: [1.0, *(v[i] for v in x.values())] for i, r in enumerate(rows)}
    if np.linalg.matrix_rank(np.array(list(cells.values()))) < len(x) + 1:
        return f"{' and '.join(x)} are collinear over the cells {', '.join(cells)}"
    return None


def fit_models(rows: Sequence[Mapping[str, Any]], predictors: Sequence[str] = PREDICTORS) -> dict[str, dict[str, Any]]:
    """Score ~ Words + P for each P in `predictors`, and Score ~ P within each text budget, keyed by model_key."""
    fits = {}
    for predictor in predictors:
        for text_words in (None, *sorted({r["Words"] for r in rows})):
            result = fit(rows, ("Words", predictor) if text_words is None else (predictor,), text_words)
            fits[result["model"]] = result
    return fits


def fit_paper(size: str) -> dict[str, dict[str, Any]]:
    """The models fitted on the paper's own table of `size`: Words + Images (full), and Words + MTR too (half)."""
    table = PAPER[size]
    rows = table_rows({cell: c.phenomena for cell, c in table.items()},
                      {cell: c.extra.get("mtr_top1") for cell, c in table.items()})
    return fit_models(rows, PREDICTORS if size == "half" else ("Images",))
