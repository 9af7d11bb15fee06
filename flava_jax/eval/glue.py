"""GLUE, SuperGLUE and MSGS classification data for fine-tuning (docs/reference.md#fine-tuning): a task registry, the
readers for every layout the tasks come in, and the metrics.

The registry is data: each task names its input templates, its reference hyperparameters, its metrics and the
file layouts it may be found in, in order of preference:
* BabyLM's filtered JSON lines, `{task}.train.jsonl` + `{task}.valid.jsonl` (2025) or `{task}.train.json` +
  `{task}.validation.json` (2023; MNLI `.validation_matched.json` / `.validation_mismatched.json`);
* the original GLUE TSVs (`SST-2/train.tsv`, `QNLI/dev.tsv`, ...; CoLA's headerless `cola_public/raw/*.tsv`,
  whose dev set is the in-domain and out-of-domain files together, as GLUE's);
* SuperGLUE's JSON lines (`BoolQ/train.jsonl` + `val.jsonl`, ...; MultiRC's nested passages/questions/answers are
  flattened to one example per answer; WSC's spans sit under `target`);
* MSGS: `{task}.train.json` + `{task}.validation.json` (BabyLM), or the release's `{task}/train.jsonl` +
  `test.jsonl`, whose rows carry `linguistic_feature_label` / `surface_feature_label` instead of `label`.
A layout is looked for in a data directory and in its subdirectories down to three levels, so that both a folder
holding several suites (`--glue_data=data`) and one suite's own folder (`--glue_data=data/glue/babylm_filtered`)
work.

Every example becomes (text_a, text_b or None, label) as the reference builds it; e.g. MultiRC gives
("Question: {q} Answer: {a}", paragraph) and WSC ('Does "{span2}" refer to "{span1}" in this passage?', text). A
malformed line (bad JSON, a missing or empty field, a wrong column count) is reported with its file and line
number and skipped; blank lines are not data and are passed over.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where and how one source stores a task: paths relative to a data root."""

    format: str  # "jsonl", "multirc" (SuperGLUE's nested passages) or "tsv"
    train: str
    evals: tuple[str, ...]  # concatenated into the evaluation set
    fields: Mapping[str, str]  # template name -> dotted path in a row (a column name in a TSV)
    label: tuple[str, ...] = ("label",)  # the first of these that is present and not null
    columns: tuple[str, ...] | None = None  # a TSV without a header row: its column names


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    suite: str  # "glue" (GLUE and SuperGLUE) or "msgs"
    text_a: str  # str.format templates over the layout's field names
    text_b: str | None
    layouts: tuple[Layout, ...]  # in order of preference
    learning_rate: float
    batch_size: int
    max_steps: int | None  # None: the epoch limit alone
    metrics: tuple[str, ...]
    max_length: int = 512

    @property
    def select(self) -> str:
        """The metric that picks the best evaluation: F1 for binary tasks, accuracy otherwise (the reference's)."""
        return "f1" if "f1" in self.metrics else "accuracy"


@dataclasses.dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: Any  # as stored: an int, a bool or a string


@dataclasses.dataclass(frozen=True)
class Source:
    """A layout found under a data directory; `train` is None and `evals` empty where those files are absent."""

    task: Task
    layout: Layout
    train: Path | None
    evals: tuple[Path, ...]

    @property
    def complete(self) -> bool:
        return self.train is not None and bool(self.evals)


# ------------------------------------------------------------------------------------------------ the registry
BINARY = ("accuracy", "f1")
_JSON_SPLITS = (("train.jsonl", "valid.jsonl"), ("train.json", "validation.json"))


def _fields(spec: Mapping[str, str] | tuple[str, str] | str) -> Mapping[str, str]:
    """A single field name, an (a, b) pair of names, or an explicit template-name -> path mapping."""
    if isinstance(spec, str):
        return {"a": spec}
    if isinstance(spec, tuple):
        return {"a": spec[0], "b": spec[1]}
    return spec


def _babylm(stem: str, fields: Any, splits: Sequence[tuple[str, str]] = _JSON_SPLITS) -> tuple[Layout, ...]:
    return tuple(Layout("jsonl", f"{stem}.{train}", (f"{stem}.{dev}",), _fields(fields)) for train, dev in splits)


def _glue_tsv(directory: str, fields: Any, label: str = "label", dev: str = "dev.tsv") -> Layout:
    return Layout("tsv", f"{directory}/train.tsv", (f"{directory}/{dev}",), _fields(fields), (label,))


def _superglue(directory: str, fields: Any, format: str = "jsonl") -> Layout:
    return Layout(format, f"{directory}/train.jsonl", (f"{directory}/val.jsonl",), _fields(fields))


_COLA_COLUMNS = ("source", "label", "mark", "sentence")  # cola_public's README
_WSC_TEMPLATE = 'Does "{span2}" refer to "{span1}" in this passage?'
_MULTIRC = {"question": "question", "answer": "answer", "paragraph": "paragraph"}


def _glue(name: str, layouts: tuple[Layout, ...], lr: float, batch: int, steps: int | None,
          a: str = "{a}", b: str | None = "{b}", metrics: tuple[str, ...] = BINARY) -> Task:
    return Task(name, "glue", a, b, layouts, lr, batch, steps, metrics)


GLUE_TASKS = (
    _glue("cola", (*_babylm("cola", "sentence"),
                   Layout("tsv", "cola_public/raw/in_domain_train.tsv",
                          ("cola_public/raw/in_domain_dev.tsv", "cola_public/raw/out_of_domain_dev.tsv"),
                          {"a": "sentence"}, columns=_COLA_COLUMNS),
                   Layout("tsv", "CoLA/train.tsv", ("CoLA/dev.tsv",), {"a": "sentence"}, columns=_COLA_COLUMNS)),
          1e-5, 16, 5336, b=None, metrics=(*BINARY, "mcc")),
    _glue("sst2", (*_babylm("sst2", "sentence"), _glue_tsv("SST-2", "sentence")), 1e-5, 32, 20935, b=None),
    _glue("mrpc", (*_babylm("mrpc", ("sentence1", "sentence2")),
                   _glue_tsv("MRPC", ("#1 String", "#2 String"), label="Quality")), 1e-5, 16, 2296),
    _glue("qqp", (*_babylm("qqp", ("question1", "question2")),
                  _glue_tsv("QQP", ("question1", "question2"), label="is_duplicate")), 1e-5, 32, 113272),
    _glue("mnli", (*_babylm("mnli", ("premise", "hypothesis"),
                            (("train.jsonl", "valid.jsonl"), ("train.json", "validation_matched.json"))),
                   _glue_tsv("MNLI", ("sentence1", "sentence2"), label="gold_label", dev="dev_matched.tsv")),
          1e-5, 32, 123873, metrics=("accuracy",)),
    _glue("mnli-mm", (*_babylm("mnli", ("premise", "hypothesis"), (("train.json", "validation_mismatched.json"),)),
                      _glue_tsv("MNLI", ("sentence1", "sentence2"), label="gold_label", dev="dev_mismatched.tsv")),
          2e-5, 32, None, metrics=("accuracy",)),
    _glue("qnli", (*_babylm("qnli", ("question", "sentence")), _glue_tsv("QNLI", ("question", "sentence"))),
          1e-5, 32, 33112),
    _glue("rte", (*_babylm("rte", ("sentence1", "sentence2")), _glue_tsv("RTE", ("sentence1", "sentence2")),
                  _superglue("RTE", ("premise", "hypothesis"))), 2e-5, 16, 2036),
    _glue("boolq", (*_babylm("boolq", ("question", "passage")), _superglue("BoolQ", ("question", "passage"))),
          2e-5, 32, None),
    _glue("multirc", (*_babylm("multirc", _MULTIRC), _superglue("MultiRC", _MULTIRC, format="multirc")),
          2e-5, 32, None, a="Question: {question} Answer: {answer}", b="{paragraph}"),
    _glue("wsc", (*_babylm("wsc", {"span1": "span1_text", "span2": "span2_text", "text": "text"}),
                  _superglue("WSC", {"span1": "target.span1_text", "span2": "target.span2_text", "text": "text"})),
          2e-5, 32, None, a=_WSC_TEMPLATE, b="{text}"),
)

# Upstream BabyLM's MSGS settings (the fork dropped MSGS): lr 5e-5, batch 64, 128 tokens, 10 epochs.
MSGS_NAMES = ("main_verb_control", "control_raising_control", "syntactic_category_control",
              "lexical_content_the_control", "relative_position_control", "main_verb_lexical_content_the",
              "main_verb_relative_token_position", "syntactic_category_lexical_content_the",
              "syntactic_category_relative_position", "control_raising_lexical_content_the",
              "control_raising_relative_token_position")
# The release's rows have no `label`: the target is the linguistic feature, or the surface one in the surface
# control paradigms, whose linguistic label is null.
_MSGS_LABEL = ("label", "linguistic_feature_label", "surface_feature_label")
MSGS_TASKS = tuple(
    Task(name, "msgs", "{a}", None,
         (*(dataclasses.replace(layout, label=_MSGS_LABEL) for layout in _babylm(name, "sentence", (
             ("train.json", "validation.json"), ("train.jsonl", "valid.jsonl")))),
          Layout("jsonl", f"{name}/train.jsonl", (f"{name}/test.jsonl",), {"a": "sentence"}, _MSGS_LABEL)),
         5e-5, 64, None, (*BINARY, "mcc"), max_length=128)
    for name in MSGS_NAMES)

TASKS: dict[str, Task] = {task.name: task for task in (*GLUE_TASKS, *MSGS_TASKS)}


# ------------------------------------------------------------------------------------------------ finding data
def _roots(directory: Path, depth: int = 3) -> list[Path]:
    roots, level = [directory], [directory]
    for _ in range(depth):
        level = sorted(p for d in level for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        roots += level
    return roots


def find_sources(directory: str | os.PathLike, tasks: Sequence[Task]) -> dict[str, list[Source]]:
    """For each task, every layout found in `directory` or below it (down to three levels), in order of
    preference, complete or not."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    roots = _roots(directory)
    found: dict[str, list[Source]] = {}
    for task in tasks:
        found[task.name] = []
        for layout in task.layouts:
            for root in roots:
                train, evals = root / layout.train, tuple(root / e for e in layout.evals)
                has_train, has_evals = train.is_file(), all(e.is_file() for e in evals)
                if has_train or has_evals:
                    found[task.name].append(Source(task, layout, train if has_train else None,
                                                   evals if has_evals else ()))
    return found


def choose_sources(directory: str | os.PathLike, suite: str, names: Sequence[str] | None = None
                   ) -> tuple[list[Source], list[str]]:
    """(sources, notes): the preferred complete source of each named task of `suite` (default: every task that
    has one), and a note per task found without a training or an evaluation file. A named task that is unknown or
    has no complete source raises ValueError."""
    known = {name: task for name, task in TASKS.items() if task.suite == suite}
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown {suite} tasks {unknown}; known: {', '.join(known)}")
    found = find_sources(directory, [known[n] for n in (names or known)])
    sources, notes = [], []
    for name, candidates in found.items():
        complete = [s for s in candidates if s.complete]
        if complete:
            sources.append(complete[0])
            continue
        if names:
            looked_for = "; ".join(f"{layout.train} + {' + '.join(layout.evals)}" for layout in known[name].layouts)
            raise ValueError(f"{suite} task {name}: no training and evaluation files in {directory} (looked for "
                             f"{looked_for})")
        notes += [f"{name}: {s.train or ', '.join(map(str, s.evals))} found, but no "
                  f"{'evaluation' if s.train else 'training'} file beside it; not fine-tuned" for s in candidates]
    return sources, notes


# ------------------------------------------------------------------------------------------------ reading
def _field(row: Mapping[str, Any], path: str) -> Any:
    value: Any = row
    for key in path.split("."):
        value = value[key]
    return value


def _text(row: Mapping[str, Any], path: str) -> str:
    value = _field(row, path)
    if not isinstance(value, str):
        raise TypeError(f"field {path!r} is {type(value).__name__}, not text")
    if not value.strip():
        raise ValueError(f"field {path!r} is empty")
    return value


def _label(row: Mapping[str, Any], paths: tuple[str, ...]) -> Any:
    for path in paths:
        try:
            value = _field(row, path)
        except KeyError:
            continue
        if value is not None:
            if not isinstance(value, int | str):  # bool is an int
                raise TypeError(f"label {path!r} is {type(value).__name__}")
            return value
    raise KeyError(f"no label ({' or '.join(paths)})")


def _multirc_rows(passage: Mapping[str, Any]) -> list[dict[str, Any]]:
    """SuperGLUE MultiRC: one row per answer option, flat like BabyLM's."""
    text = passage["passage"]["text"]
    return [{"paragraph": text, "question": q["question"], "answer": a["text"], "label": a["label"]}
            for q in passage["passage"]["questions"] for a in q["answers"]]


def _parse(line: str, layout: Layout, header: tuple[str, ...] | None) -> list[Mapping[str, Any]]:
    if layout.format == "tsv":
        # GLUE's TSVs are not CSV-quoted (QNLI's sentences hold bare quotes), so a plain split on tabs.
        cells = line.rstrip("\r\n").split("\t")
        if len(cells) != len(header or ()):
            raise ValueError(f"{len(cells)} columns, expected {len(header or ())}")
        return [dict(zip(header or (), cells, strict=True))]
    row = json.loads(line)
    if not isinstance(row, dict):
        raise TypeError(f"a JSON {type(row).__name__}, not an object")
    return _multirc_rows(row) if layout.format == "multirc" else [row]


def _example(row: Mapping[str, Any], task: Task, layout: Layout) -> Example:
    values = {name: _text(row, path) for name, path in layout.fields.items()}
    return Example(task.text_a.format(**values), None if task.text_b is None else task.text_b.format(**values),
                   _label(row, layout.label))


def read_examples(path: str | os.PathLike, task: Task, layout: Layout, limit: int | None = None
                  ) -> tuple[list[Example], list[str]]:
    """(examples, problems): the first `limit` examples of one file (all by default), and one message per
    skipped line."""
    path = Path(path)
    examples: list[Example] = []
    problems: list[str] = []
    with open(path, encoding="utf-8") as f:
        lines = enumerate(f, start=1)
        header = layout.columns
        if layout.format == "tsv" and header is None:
            header = tuple(next(lines, (0, ""))[1].rstrip("\r\n").split("\t"))
        for number, line in lines:
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                new = [_example(row, task, layout) for row in _parse(line, layout, header)]
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # JSONDecodeError: ValueError
                problems.append(f"{path}:{number}: skipped ({type(e).__name__}: {e})")
                continue
            examples.extend(new)
    return examples[:limit] if limit is not None else examples, problems


def read_source(source: Source, train_limit: int | None = None, eval_limit: int | None = None
                ) -> tuple[list[Example], list[Example], list[str]]:
    """(train, eval, problems) of a complete source; the evaluation files are concatenated before the limit."""
    if not source.complete:
        raise ValueError(f"{source.task.name}: the source lacks a training or evaluation file")
    train, problems = read_examples(source.train, source.task, source.layout, train_limit)  # type: ignore[arg-type]
    evals: list[Example] = []
    for path in source.evals:
        left = None if eval_limit is None else eval_limit - len(evals)
        if left == 0:
            break
        more, more_problems = read_examples(path, source.task, source.layout, left)
        evals += more
        problems += more_problems
    return train, evals, problems


def label_list(*splits: Sequence[Example]) -> list[Any]:
    """The sorted unique labels of all splits (the reference sorts the training set's; with the evaluation
    set's too, a class that a small training file lacks, as FewGLUE's all-true WSC, still gets an output)."""
    return sorted({e.label for split in splits for e in split})


# ------------------------------------------------------------------------------------------------ metrics
def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def binary_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of class 1 (sklearn's average="binary"); 0 when class 1 is neither present nor predicted."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    tp = np.sum((predictions == 1) & (labels == 1))
    wrong = np.sum(predictions != labels)  # false positives + false negatives
    return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Matthews correlation (Gorodkin's multiclass form, which is the usual one for two classes); 0 when either
    side is constant, as sklearn returns."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = np.union1d(labels, predictions)
    confusion = (labels[:, None] == classes[None]).astype(np.float64).T @ (predictions[:, None] == classes[None])
    total, correct = confusion.sum(), np.trace(confusion)
    true, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    denominator = np.sqrt((total ** 2 - predicted @ predicted) * (total ** 2 - true @ true))
    return float((correct * total - true @ predicted) / denominator) if denominator else 0.0


METRICS = {"accuracy": accuracy, "f1": binary_f1, "mcc": matthews_corrcoef}


def compute_metrics(names: Sequence[str], labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """{name: value} for the named metrics, over label ids."""
    return {name: METRICS[name](labels, predictions) for name in names}
