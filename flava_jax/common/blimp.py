"""BLiMP minimal pairs from either layout: the original (one `<paradigm>.jsonl` per paradigm) or BabyLM's filtered
copy (the same per-paradigm files, `pair_id` for `pairID`). Only the 67 paradigm files count: others are named in a
warning and ignored, or refused in strict mode. A malformed line is reported and skipped; a file that cannot be read
is an error naming it.

Phenomena follow BLiMP's `linguistics_term`, grouped into the 12 categories BabyLM reports (the BLiMP paper's):
s-selection counts as argument structure, and filler-gap dependencies as filler gap.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

PHENOMENA = ("anaphor_agreement", "argument_structure", "binding", "control_raising", "determiner_noun_agreement",
             "ellipsis", "filler_gap", "irregular_forms", "island_effects", "npi_licensing", "quantifiers",
             "subject_verb_agreement")
_GROUPS = {"s-selection": "argument_structure", "filler_gap_dependency": "filler_gap"}
PARADIGMS = (  # the 67 paradigm files of BLiMP (and of BabyLM's filtered copy): the only ones read_blimp reads
    "adjunct_island", "anaphor_gender_agreement", "anaphor_number_agreement", "animate_subject_passive",
    "animate_subject_trans", "causative", "complex_NP_island", "coordinate_structure_constraint_complex_left_branch",
    "coordinate_structure_constraint_object_extraction", "determiner_noun_agreement_1", "determiner_noun_agreement_2",
    "determiner_noun_agreement_irregular_1", "determiner_noun_agreement_irregular_2",
    "determiner_noun_agreement_with_adj_2", "determiner_noun_agreement_with_adj_irregular_1",
    "determiner_noun_agreement_with_adj_irregular_2", "determiner_noun_agreement_with_adjective_1",
    "distractor_agreement_relational_noun", "distractor_agreement_relative_clause", "drop_argument",
    "ellipsis_n_bar_1", "ellipsis_n_bar_2", "existential_there_object_raising", "existential_there_quantifiers_1",
    "existential_there_quantifiers_2", "existential_there_subject_raising", "expletive_it_object_raising",
    "inchoative", "intransitive", "irregular_past_participle_adjectives", "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question", "left_branch_island_simple_question", "matrix_question_npi_licensor_present",
    "npi_present_1", "npi_present_2", "only_npi_licensor_present", "only_npi_scope", "passive_1", "passive_2",
    "principle_A_c_command", "principle_A_case_1", "principle_A_case_2", "principle_A_domain_1",
    "principle_A_domain_2", "principle_A_domain_3", "principle_A_reconstruction",
    "regular_plural_subject_verb_agreement_1", "regular_plural_subject_verb_agreement_2",
    "sentential_negation_npi_licensor_present", "sentential_negation_npi_scope", "sentential_subject_island",
    "superlative_quantifiers_1", "superlative_quantifiers_2", "tough_vs_raising_1", "tough_vs_raising_2", "transitive",
    "wh_island", "wh_questions_object_gap", "wh_questions_subject_gap", "wh_questions_subject_gap_long_distance",
    "wh_vs_that_no_gap", "wh_vs_that_no_gap_long_distance", "wh_vs_that_with_gap", "wh_vs_that_with_gap_long_distance",
)
log = logging.getLogger("flava_jax.blimp")


class BlimpError(ValueError):
    """A BLiMP directory that cannot be used as it is; the message names the file and says what to do."""


@dataclasses.dataclass(frozen=True)
class Pair:
    paradigm: str
    phenomenon: str
    index: int  # line number in its file, from 0
    good: str
    bad: str


def paradigm_files(directory: str | os.PathLike, strict: bool = False) -> list[Path]:
    """The paradigm files in `directory` (`<paradigm>.jsonl`, else `.json`). Other files there are named in one
    warning and ignored, or refused when `strict`."""
    directory = Path(directory)
    files = sorted(directory.glob("*.jsonl")) or sorted(directory.glob("*.json"))
    stray = [path.name for path in files if path.stem not in PARADIGMS]
    if stray and strict:
        raise BlimpError(f"{directory} holds files that are not BLiMP paradigms: {', '.join(stray)}; move them out "
                         "of it or run without --blimp_strict to ignore them")
    if stray:
        log.warning("BLiMP: ignored %d files in %s that are not BLiMP paradigms: %s", len(stray), directory,
                    ", ".join(stray))
    known = [path for path in files if path.stem in PARADIGMS]
    if not known:
        raise FileNotFoundError(f"{directory} holds none of BLiMP's {len(PARADIGMS)} <paradigm>.jsonl files")
    return known


def read_blimp(directory: str | os.PathLike, limit: int | None = None, paradigms: list[str] | None = None,
               strict: bool = False) -> tuple[list[Pair], list[str]]:
    """(pairs, problems): the first `limit` lines of each paradigm file (all by default, every paradigm unless
    `paradigms` is given; see paradigm_files for other files and `strict`), and one message per skipped line or
    missing paradigm. A file that cannot be read raises BlimpError naming it."""
    pairs: list[Pair] = []
    problems: list[str] = []
    for path in paradigm_files(directory, strict):
        if paradigms is None or path.stem in paradigms:
            try:
                _read_paradigm(path, limit, pairs, problems)
            except (OSError, UnicodeDecodeError) as e:
                raise BlimpError(f"{path} cannot be read as UTF-8 JSON lines ({type(e).__name__}: {e}); replace it "
                                 "with BLiMP's original file") from e
    missing = sorted(set(paradigms or ()) - {p.paradigm for p in pairs})
    if missing:
        problems.append(f"{directory}: no data for paradigms {missing}")
    return pairs, problems


def _read_paradigm(path: Path, limit: int | None, pairs: list[Pair], problems: list[str]) -> None:
    """Append the pairs of one paradigm file to `pairs`, a message per malformed line to `problems`."""
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            if limit is not None and index >= limit:
                break
            try:
                row = json.loads(line)
                good, bad = row["sentence_good"], row["sentence_bad"]
                term = row.get("linguistics_term", path.stem)
                if not isinstance(good, str) or not isinstance(bad, str):
                    raise TypeError("sentences are not strings")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                problems.append(f"{path}:{index + 1}: skipped ({type(e).__name__}: {e})")
                continue
            pairs.append(Pair(path.stem, _GROUPS.get(term, term), index, good, bad))


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
