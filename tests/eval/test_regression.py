"""The paper's mixed models (flava_jax/eval/regression.py) against an independent reference.

In the paper's balanced design (every category has every cell, the predictors vary only within a category) the REML
random-intercept model's fixed effects and standard errors equal those of ordinary least squares with a fixed
intercept per category, as long as the category variance is estimated above 0; the reference below is that OLS fit
in numpy alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flava_jax.common.blimp import PHENOMENA
from flava_jax.eval.paper_results import HALF, PAPER, REGRESSIONS
from flava_jax.eval.regression import fit_models, fit_paper, robust_scale, table_rows

TEXT = {"10M": 1e7, "100M": 1e8}
IMAGES = {"0": 0.0, "40K": 4e4, "400K": 4e5, "4M": 4e6}


def _ols_with_category_dummies(size: str, predictor: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients, standard errors and two-sided normal p-values of Words and `predictor` (Images or MTR), by
    least squares on [Words, predictor, one dummy per category], predictors log10(x + 1e-9) and robust-scaled."""
    raw: dict[str, list[float]] = {"Words": [], "Images": [], "MTR": []}
    for cell, c in PAPER[size].items():
        text, images = cell.split("/")
        raw["Words"] += [TEXT[text]] * len(PHENOMENA)
        raw["Images"] += [IMAGES[images]] * len(PHENOMENA)
        raw["MTR"] += [c.extra.get("mtr_top1", 0.1)] * len(PHENOMENA)  # chance without images
    columns = []
    for name in ("Words", predictor):
        x = np.log10(np.array(raw[name]) + 1e-9)
        q1, median, q3 = np.percentile(x, [25, 50, 75])
        columns.append((x - median) / (q3 - q1))
    dummies = np.tile(np.eye(len(PHENOMENA)), (len(PAPER[size]), 1))
    design = np.column_stack([*columns, dummies])
    y = np.array([c.phenomena[name] for c in PAPER[size].values() for name in PHENOMENA])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ coef
    sigma2 = residuals @ residuals / (len(y) - np.linalg.matrix_rank(design))
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
    p = np.array([math.erfc(abs(b / s) / math.sqrt(2)) for b, s in zip(coef, se, strict=True)])
    return coef[:2], se[:2], p[:2]


@pytest.mark.parametrize(("size", "predictor"), [("full", "Images"), ("half", "Images"), ("half", "MTR")])
def test_the_mixed_model_equals_least_squares_with_a_category_intercept(size: str, predictor: str) -> None:
    fit = fit_paper(size)[f"Score ~ Words + {predictor}"]
    assert fit["rows"] == 96 and fit["categories"] == 12 and fit["converged"] and not fit["warnings"]
    assert fit["category_variance"] > 1.0  # away from the boundary, where the equivalence would not hold
    coef, se, p = _ols_with_category_dummies(size, predictor)
    for i, name in enumerate(("Words", predictor)):
        got = fit["coefficients"][name]
        assert got["coef"] == pytest.approx(coef[i], rel=1e-6)
        assert got["se"] == pytest.approx(se[i], rel=1e-6)
        assert got["p"] == pytest.approx(p[i], rel=1e-5, abs=1e-300)


def test_the_offset_reproduces_the_published_10M_model_and_words_is_the_text_difference() -> None:
    fits = fit_paper("full")
    low = fits["Score ~ Images (10M words)"]["coefficients"]["Images"]
    assert (round(low["coef"], 2), round(low["p"], 2)) == (0.01, 0.96)  # the thesis's summary: +0.01, p = .96
    # Balanced design, Words scaled to +-0.5: its estimate is the 100M cells' mean score minus the 10M cells'.
    means = {text: np.mean([v for cell, c in PAPER["full"].items() if cell.startswith(f"{text}/")
                            for v in c.phenomena.values()]) for text in TEXT}
    words = fits["Score ~ Words + Images"]["coefficients"]["Words"]["coef"]
    assert words == pytest.approx(means["100M"] - means["10M"], rel=1e-9)
    assert round(words, 2) == 7.21  # not the published 7.59 (regression.py's docstring says why)


@pytest.mark.parametrize("size", ["full", "half"])
def test_the_published_models_are_the_ones_fitted(size: str) -> None:
    assert set(REGRESSIONS[size]) <= set(fit_paper(size))


def test_robust_scaling_by_hand() -> None:
    # numpy's linear percentiles: [0, 10, 20, 30] has q1 = 7.5, median 15, q3 = 22.5, IQR 15
    assert robust_scale(np.array([0.0, 10.0, 20.0, 30.0])) == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])
    assert robust_scale(np.array([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx([-1.0, -0.5, 0.0, 0.5, 48.5])
    # IQR 0: centred, not divided (sklearn's RobustScaler)
    assert robust_scale(np.array([5.0, 5.0, 5.0, 5.0, 9.0])) == pytest.approx([0.0, 0.0, 0.0, 0.0, 4.0])


def _scores(offset: float) -> dict[str, float]:
    return {name: 60.0 + offset + 2.0 * i + (i % 3) for i, name in enumerate(PHENOMENA)}


def test_models_that_cannot_be_fitted_say_why() -> None:
    one_text = fit_models(table_rows({"10M/0": _scores(0), "10M/40K": _scores(1), "10M/4M": _scores(0.5)},
                                     {"10M/40K": 0.4, "10M/4M": None}))
    assert one_text["Score ~ Words + Images"]["not_fitted"] == "Words takes 1 value (10M)"
    assert one_text["Score ~ Words + MTR"]["not_fitted"] == "no zero-shot results (MTR) for 10M/4M"
    assert "coefficients" in one_text["Score ~ Images (10M words)"]
    diagonal = fit_models(table_rows({"10M/0": _scores(0), "100M/40K": _scores(8)}, {"100M/40K": 0.3}))
    assert diagonal["Score ~ Words + Images"]["not_fitted"] == "Words and Images are collinear over the cells " \
                                                               "10M/0, 100M/40K"
    assert diagonal["Score ~ Images (10M words)"]["not_fitted"] == "Images takes 1 value (0)"


def test_rows_use_chance_mtr_without_images_and_leave_out_all_budgets() -> None:
    rows = table_rows({"10M/0": {"binding": 61.0}, "10M/40K": {"binding": 62.0, "island_effects": 40.0},
                       "all/all": {"binding": 50.0}}, {"10M/40K": 0.52})
    assert [(r["cell"], r["category"], r["Words"], r["Images"], r["MTR"], r["Score"]) for r in rows] == [
        ("10M/0", "binding", 10_000_000, 0, 0.1, 61.0), ("10M/40K", "binding", 10_000_000, 40_000, 0.52, 62.0),
        ("10M/40K", "island_effects", 10_000_000, 40_000, 0.52, 40.0)]
    assert HALF["10M/0"].extra == {}  # the paper's table has no MTR there either: fit_paper uses chance too
