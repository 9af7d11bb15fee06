"""The paper's own numbers (full size, the BabyLM paper: docs/reference.md#full-size-results; half size, the thesis:
docs/reference.md#half-size-results), as data for `flava_jax.report`.

Each grid cell ("10M/40K": text words / images) holds the best checkpoint's W&B step (minimum PPPL, capped at
10.5K / 17.5K steps at full size), PPPL (the reference's sentence-averaged variant on WiT), the BLiMP average and
the 12 per-phenomenon accuracies, all in percent as printed; plus the full-size validation MLM loss and the
half-size ImageNet zero-shot accuracy (MTR, %) where the tables give them.

REGRESSIONS holds the thesis's published mixed-model summaries (docs/reference.md#results), which
flava_jax/eval/regression.py refits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The tables' phenomenon columns, in their order, and our names for them (flava_jax.data.blimp.PHENOMENA).
COLUMNS = {"AnaAgr": "anaphor_agreement", "ArgStr": "argument_structure", "Binding": "binding",
           "CtrlRais": "control_raising", "DetNoun": "determiner_noun_agreement", "Ellipsis": "ellipsis",
           "FillerGap": "filler_gap", "IrregForms": "irregular_forms", "Island": "island_effects",
           "NPI": "npi_licensing", "Quant": "quantifiers", "SVAgr": "subject_verb_agreement"}
TEXT_BUDGETS = ("10M", "100M")
IMAGE_BUDGETS = ("0", "40K", "400K", "4M")


@dataclasses.dataclass(frozen=True)
class PaperCell:
    """One grid cell's numbers at its best checkpoint; accuracies in percent."""

    best_step: int
    pppl: float
    blimp: float
    phenomena: dict[str, float]  # by our phenomenon names
    extra: dict[str, float]  # val_mlm_loss (full size) or mtr_top1 / mtr_top5 (half size, runs with images)


def _table(rows: dict[str, tuple[Any, ...]]) -> dict[str, PaperCell]:
    return {cell: PaperCell(step, pppl, blimp, dict(zip(COLUMNS.values(), phenomena, strict=True)), extra)
            for cell, (step, pppl, blimp, extra, phenomena) in rows.items()}


# cell: (best step, PPPL, BLiMP average, extra, per-phenomenon accuracies in COLUMNS order)
FULL = _table({
    "10M/0": (4604, 20.81, 63.96, {"val_mlm_loss": 3.624},
             (76.28, 64.13, 61.92, 60.99, 83.60, 67.44, 60.51, 78.81, 41.74, 50.20, 61.95, 59.93)),
    "10M/40K": (5346, 24.58, 63.98, {"val_mlm_loss": 3.739},
               (80.16, 63.74, 60.11, 61.20, 82.99, 63.05, 64.04, 77.25, 38.38, 54.86, 61.82, 60.20)),
    "10M/400K": (4876, 27.01, 63.31, {"val_mlm_loss": 3.801},
                (82.06, 64.52, 56.75, 61.93, 81.40, 61.37, 61.27, 77.00, 42.08, 49.32, 62.75, 59.28)),
    "10M/4M": (4876, 25.86, 64.53, {"val_mlm_loss": 3.776},
              (78.37, 63.65, 61.44, 60.32, 79.89, 68.71, 65.89, 77.00, 42.38, 54.92, 60.48, 61.25)),
    "100M/0": (17435, 6.90, 71.32, {"val_mlm_loss": 2.544},
              (96.27, 69.17, 67.50, 67.61, 90.77, 79.79, 65.92, 82.29, 48.36, 58.28, 58.09, 71.80)),
    "100M/40K": (12267, 9.64, 70.45, {"val_mlm_loss": 2.771},
                (95.50, 68.95, 64.90, 69.29, 90.52, 76.27, 62.23, 81.53, 53.21, 54.15, 60.87, 67.99)),
    "100M/400K": (16344, 9.95, 71.90, {"val_mlm_loss": 2.810},
                 (94.43, 69.16, 70.01, 65.95, 90.78, 79.50, 62.15, 84.07, 51.20, 59.64, 62.88, 73.08)),
    "100M/4M": (16542, 10.10, 70.93, {"val_mlm_loss": 2.837},
               (95.81, 68.72, 70.01, 65.27, 89.45, 80.31, 62.04, 86.77, 52.43, 56.30, 53.19, 70.82)),
})
HALF = _table({
    "10M/0": (4308, 22.80, 63.62, {},
             (72.90, 63.60, 61.77, 62.55, 81.28, 72.98, 60.27, 75.11, 45.14, 50.18, 57.60, 60.09)),
    "10M/40K": (11242, 26.36, 63.31, {"mtr_top1": 0.52, "mtr_top5": 2.00},
               (82.77, 62.37, 59.72, 62.31, 82.31, 65.82, 59.34, 78.78, 36.77, 49.51, 60.46, 59.58)),
    "10M/400K": (5867, 27.59, 64.08, {"mtr_top1": 0.53, "mtr_top5": 2.22},
                (78.68, 63.29, 61.92, 62.70, 80.24, 66.74, 60.32, 78.63, 40.17, 55.18, 61.03, 60.05)),
    "10M/4M": (5970, 27.44, 62.63, {"mtr_top1": 0.69, "mtr_top5": 2.76},
              (79.09, 62.60, 59.56, 62.53, 81.50, 60.10, 61.33, 74.20, 43.27, 50.68, 56.72, 59.95)),
    "100M/0": (25683, 9.05, 70.51, {},
              (94.94, 68.96, 68.63, 67.19, 89.37, 76.15, 63.83, 76.03, 50.90, 59.14, 62.29, 68.69)),
    "100M/40K": (52016, 8.42, 70.31, {"mtr_top1": 0.77, "mtr_top5": 2.89},
                (95.40, 68.44, 65.54, 66.39, 90.73, 78.29, 64.78, 82.09, 50.19, 54.80, 56.21, 70.80)),
    "100M/400K": (16912, 13.35, 67.74, {"mtr_top1": 2.65, "mtr_top5": 8.01},
                 (91.41, 66.63, 67.20, 66.55, 88.39, 70.09, 61.28, 77.66, 46.71, 54.93, 58.66, 63.43)),
    "100M/4M": (20099, 13.40, 67.09, {"mtr_top1": 2.46, "mtr_top5": 7.54},
               (91.26, 67.36, 64.02, 65.89, 87.97, 71.77, 61.73, 78.17, 49.33, 49.45, 53.22, 64.91)),
})
PAPER = {"full": FULL, "half": HALF}


@dataclasses.dataclass(frozen=True)
class Published:
    """One coefficient of a published regression summary: estimate, standard error (None: not quoted) and p-value as
    printed ("< .001", ".29")."""

    coef: float
    se: float | None
    p: str


REGRESSION_SOURCE = "the thesis's regression summaries (docs/reference.md#results)"
# Mixed linear models over the 96 category x cell BLiMP scores (percent), category as a random intercept, predictors
# log10-transformed and robust-scaled; keyed by model as flava_jax.eval.regression.model_key writes them.
REGRESSIONS = {
    "full": {"Score ~ Words + Images": {"Words": Published(7.59, 0.70, "< .001"),
                                        "Images": Published(-0.27, 0.25, ".29")},
             "Score ~ Images (100M words)": {"Images": Published(-0.54, None, ".022")},
             "Score ~ Images (10M words)": {"Images": Published(0.01, None, ".96")}},
    "half": {"Score ~ Words + MTR": {"Words": Published(6.80, None, "< .001"), "MTR": Published(-1.08, None, ".001")},
             "Score ~ MTR (100M words)": {"MTR": Published(-1.11, None, "< .001")},
             "Score ~ MTR (10M words)": {"MTR": Published(-0.64, None, ".54")}},
}
# Said beside each size's published numbers in the report.
REGRESSION_CAVEATS = {
    "half": "the thesis's MTR for runs without images is random noise ~ N(0.1·k, 0.01·k) drawn by its analysis "
            "code, not a measurement"}
