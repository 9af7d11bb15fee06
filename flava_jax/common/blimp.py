"""BLiMP minimal pairs from either layout: the original (one `<paradigm>.jsonl` per paradigm) or BabyLM's filtered
copy (the same per-paradigm files, `pair_id` for `pairID`). A malformed line is reported and skipped.

Phenomena follow BLiMP's `linguistics_term`, grouped into the 12 categories BabyLM reports (the BLiMP paper's):
s-selection counts as argument structure, and filler-gap dependencies as filler gap.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

PHENOMENA = ("anaphor_agreement", "argument_structure", "binding", "control_raising", "determiner_noun_agreement",
             "ellipsis", "filler_gap", "irregular_forms", "island_effects", "npi_licensing", "quantifiers",
             "subject_verb_agreement")
_GROUPS = {"s-selection": "argument_structure", "filler_gap_dependency": "filler_gap"}


@dataclasses.dataclass(frozen=True)
class Pair:
    paradigm: str
    phenomenon: str
    index: int  # line number in its file, from 0
    good: str
    bad: str


def read_blimp(directory: str | os.PathLike, limit: int | None = None,
               paradigms: list[str] | None = None) -> tuple[list[Pair], list[str]]:
    """(pairs, problems): the first `limit` lines of each paradigm (all by default, every paradigm unless
    `paradigms` is given), and one message per skipped line or file."""
    directory = Path(directory)
    files = sorted(directory.glob("*.jsonl")) or sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{directory} holds no BLiMP *.jsonl files")
    pairs: list[Pair] = []
    problems: list[str] = []
    for path in files:
        paradigm = path.stem
        if paradigms is not None and paradigm not in paradigms:
            continue
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                if limit is not None and index >= limit:
                    break
                try:
                    row = json.loads(line)
                    good, bad = row["sentence_good"], row["sentence_bad"]
                    term = row.get("linguistics_term", paradigm)
                    if not isinstance(good, str) or not isinstance(bad, str):
                        raise TypeError("sentences are not strings")
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                    problems.append(f"{path}:{index + 1}: skipped ({type(e).__name__}: {e})")
                    continue
                pairs.append(Pair(paradigm, _GROUPS.get(term, term), index, good, bad))
    missing = sorted(set(paradigms or ()) - {p.paradigm for p in pairs})
    if missing:
        problems.append(f"{directory}: no data for paradigms {missing}")
    return pairs, problems


def blimp_accuracy(pairs: list[Any], good: list[np.ndarray], bad: list[np.ndarray]) -> dict[str, float]:
    """Accuracy per paradigm and phenomenon (a tie counts as correct, as the reference's argmax does), and their
    headline: the plain mean over phenomena."""
    by_paradigm: dict[str, list[bool]] = collections.defaultdict(list)
    by_phenomenon: dict[str, list[bool]] = collections.defaultdict(list)
    for pair, g, b in zip(pairs, good, bad, strict=True):
        correct = g.sum() >= b.sum()
        by_paradigm[pair.paradigm].append(correct)
        by_phenomenon[pair.phenomenon].append(correct)
    out = {f"blimp/{name}": float(np.mean(v)) for name, v in sorted(by_phenomenon.items())}
    out.update({f"blimp_paradigm/{name}": float(np.mean(v)) for name, v in sorted(by_paradigm.items())})
    out["blimp/accuracy"] = float(np.mean([np.mean(v) for v in by_phenomenon.values()]))
    return out
