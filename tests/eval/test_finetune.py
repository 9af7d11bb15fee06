"""GLUE/SuperGLUE/MSGS fine-tuning: the readers on every shared data file against independent counts, malformed
lines, the metrics and the AdaptivePooler against hand computations, the schedule against transformers', padding,
early stopping, learning on a separable task, and `python -m flava_jax.evaluate --tasks=glue` on real CoLA and RTE.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flava_jax.eval.glue import (
    TASKS,
    Example,
    accuracy,
    binary_f1,
    choose_sources,
    find_sources,
    matthews_corrcoef,
    read_examples,
    read_source,
)
from tests.configs import REPO
from tests.eval.exports import tiny_export

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flava_jax.eval.finetune import (  # noqa: E402  (needs torch)
    AdaptivePooler,
    SequenceClassifier,
    Settings,
    _collate,
    _encode,
    finetune,
    linear_warmup_decay,
)

# Record counts of the shared data's files, as its provenance notes give them (MultiRC: answer options; FewGLUE's
# 32-item splits are passages).
DOCUMENTED = {
    "glue/CoLA/cola_public/raw/in_domain_train.tsv": 8551, "glue/CoLA/cola_public/raw/in_domain_dev.tsv": 527,
    "glue/CoLA/cola_public/raw/out_of_domain_dev.tsv": 516, "glue/SST-2/train.tsv": 67349, "glue/SST-2/dev.tsv": 872,
    "glue/QNLI/dev.tsv": 5463, "glue/babylm2025_glue_filtered/boolq.valid.jsonl": 1635,
    "glue/babylm2025_glue_filtered/mnli.train.jsonl": 10000, "glue/babylm2025_glue_filtered/mnli.valid.jsonl": 4908,
    "glue/babylm2025_glue_filtered/mrpc.train.jsonl": 3668, "glue/babylm2025_glue_filtered/mrpc.valid.jsonl": 204,
    "glue/babylm2025_glue_filtered/multirc.valid.jsonl": 2424, "glue/babylm2025_glue_filtered/qqp.train.jsonl": 10000,
    "glue/babylm2025_glue_filtered/qqp.valid.jsonl": 20215, "glue/babylm2025_glue_filtered/rte.train.jsonl": 2490,
    "glue/babylm2025_glue_filtered/rte.valid.jsonl": 139, "glue/babylm2025_glue_filtered/wsc.train.jsonl": 554,
    "glue/babylm2025_glue_filtered/wsc.valid.jsonl": 52, "superglue/FewGLUE_32dev/BoolQ/val.jsonl": 3270,
    "superglue/FewGLUE_32dev/MultiRC/val.jsonl": 4848, "superglue/FewGLUE_32dev/WSC/val.jsonl": 104,
    "superglue/FewGLUE_32dev/RTE/val.jsonl": 277,
}
RTE_WORDS = {"entailment", "not_entailment"}


def _independent_count(path: Path) -> int:
    """Items in a file, counted without the readers: data lines, minus a TSV header; MultiRC's answer options."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if "MultiRC" in path.parts:
        return sum(len(q["answers"]) for line in lines for q in json.loads(line)["passage"]["questions"])
    return len(lines) - (path.suffix == ".tsv" and "cola_public" not in path.parts)


def _expected_labels(path: Path, task: str) -> set[Any]:
    if path.suffix == ".tsv":
        return RTE_WORDS if task == "qnli" else {"0", "1"}
    if "FewGLUE_32dev" in path.parts:
        return {True, False} if task in ("boolq", "wsc") else RTE_WORDS if task == "rte" else {0, 1}
    return {0, 1, 2} if task == "mnli" else {0, 1}


def test_readers_on_every_shared_file(shared_data: Path) -> None:
    files = sorted(p for folder in ("glue", "superglue") for p in (shared_data / folder).rglob("*")
                   if p.is_file() and p.name != "README")
    assert len(files) == 30  # 12 BabyLM + 3 CoLA TSVs + 2 SST-2 + 1 QNLI + 12 FewGLUE
    # Each file is read with the layout of a source found beside it (FewGLUE's dev32 has the layout of its val).
    sources = [s for found in find_sources(shared_data, list(TASKS.values())).values() for s in found]
    for path in files:
        source = next((s for s in sources if path in (s.train, *s.evals)), None) or next(
            s for s in sources if path.parent in {p.parent for p in (s.train, *s.evals) if p})
        examples, problems = read_examples(path, source.task, source.layout)
        relative = str(path.relative_to(shared_data))
        assert problems == [], problems[:3]
        assert len(examples) == _independent_count(path) == DOCUMENTED.get(relative, len(examples)), relative
        labels, expected = {e.label for e in examples}, _expected_labels(path, source.task.name)
        # FewGLUE's 32 WSC training examples are all positive ones (label_list adds the evaluation set's labels).
        assert labels == expected or (relative.endswith("WSC/train.jsonl") and labels == {True}), relative
        assert all(e.text_a.strip() for e in examples)
        assert all((e.text_b is None) == (source.task.text_b is None) for e in examples)
        assert all(e.text_b is None or e.text_b.strip() for e in examples)


def test_templates_and_layouts_against_the_raw_rows(shared_data: Path) -> None:
    wsc = shared_data / "glue" / "babylm2025_glue_filtered" / "wsc.train.jsonl"
    row = json.loads(wsc.read_text().splitlines()[0])
    (example, *_), _ = read_examples(wsc, TASKS["wsc"], TASKS["wsc"].layouts[0], limit=1)
    assert example == Example(f'Does "{row["span2_text"]}" refer to "{row["span1_text"]}" in this passage?',
                              row["text"], row["label"])
    multirc = shared_data / "superglue" / "FewGLUE_32dev" / "MultiRC" / "val.jsonl"
    passage = json.loads(multirc.read_text().splitlines()[0])["passage"]
    layout = next(layout for layout in TASKS["multirc"].layouts if layout.format == "multirc")
    examples, _ = read_examples(multirc, TASKS["multirc"], layout, limit=3)
    question = passage["questions"][0]
    assert examples == [Example(f"Question: {question['question']} Answer: {a['text']}", passage["text"], a["label"])
                        for a in question["answers"][:3]]
    cola = shared_data / "glue" / "CoLA" / "cola_public" / "raw" / "in_domain_train.tsv"
    columns = cola.read_text().splitlines()[0].split("\t")
    layout = next(layout for layout in TASKS["cola"].layouts if layout.train.startswith("cola_public"))
    (cola_example, *_), _ = read_examples(cola, TASKS["cola"], layout, limit=1)
    assert cola_example == Example(columns[3], None, columns[1])


def test_task_choice_on_the_shared_data(shared_data: Path) -> None:
    sources, notes = choose_sources(shared_data, "glue")
    chosen = {s.task.name: s for s in sources}
    assert set(chosen) == {"cola", "sst2", "mrpc", "qqp", "mnli", "rte", "boolq", "multirc", "wsc"}
    assert chosen["rte"].train.name == "rte.train.jsonl"  # BabyLM's filtered files before FewGLUE's 32 examples
    assert chosen["boolq"].train.parts[-2:] == ("BoolQ", "train.jsonl")  # BabyLM's boolq.train is not here
    assert [e.name for e in chosen["cola"].evals] == ["in_domain_dev.tsv", "out_of_domain_dev.tsv"]
    assert any(n.startswith("qnli:") and "no training file" in n for n in notes)
    train, evals, problems = read_source(chosen["cola"], train_limit=10, eval_limit=600)
    assert len(train) == 10 and len(evals) == 600 and not problems  # the limit runs on into the second dev file
    with pytest.raises(ValueError, match="qnli: no training and evaluation files"):
        choose_sources(shared_data, "glue", ["qnli"])
    with pytest.raises(ValueError, match="unknown glue tasks"):
        choose_sources(shared_data, "glue", ["cola", "stsb"])
    assert choose_sources(shared_data, "msgs") == ([], [])


def test_malformed_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    sst = tmp_path / "SST-2"
    sst.mkdir()
    (sst / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nthree\tcolumns\there\n\t0\nbad film\t0\n")
    (sst / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    rte = tmp_path / "babylm"
    rte.mkdir()
    good = {"sentence1": "A man sleeps.", "sentence2": "A man rests.", "label": 0, "idx": 0}
    (rte / "rte.train.jsonl").write_text("\n".join([
        json.dumps(good), '{"sentence1": "cut off', json.dumps({**good, "sentence2": None}),
        json.dumps({k: v for k, v in good.items() if k != "label"}), "[1, 2]", "", json.dumps(good)]) + "\n")
    (rte / "rte.valid.jsonl").write_text(json.dumps(good) + "\n")
    multirc = tmp_path / "MultiRC"
    multirc.mkdir()
    answers = [{"text": "A dog", "label": 1}, {"text": "A cat", "label": 0}]
    passage = {"idx": 0, "passage": {"text": "Tom has a dog.", "questions": [
        {"question": "What does Tom have?", "answers": answers}]}}
    broken = json.loads(json.dumps(passage))
    del broken["passage"]["questions"][0]["answers"][1]["label"]
    (multirc / "train.jsonl").write_text(json.dumps(broken) + "\n" + json.dumps(passage) + "\n")
    (multirc / "val.jsonl").write_text(json.dumps(passage) + "\n")

    sources = {s.task.name: s for s in choose_sources(tmp_path, "glue")[0]}
    train, _, problems = read_source(sources["sst2"])
    assert [e.text_a for e in train] == ["good film", "bad film"]
    assert [p.split(" (")[0] for p in problems] == [f"{sst / 'train.tsv'}:{n}: skipped" for n in (3, 4)]
    assert "3 columns, expected 2" in problems[0] and "empty" in problems[1]
    train, _, problems = read_source(sources["rte"])
    path = rte / "rte.train.jsonl"
    assert len(train) == 2 and [p.split(" (")[0] for p in problems] == [f"{path}:{n}: skipped" for n in (2, 3, 4, 5)]
    assert "JSONDecodeError" in problems[0] and "NoneType" in problems[1] and "no label" in problems[2]
    train, _, problems = read_source(sources["multirc"])
    assert [e.label for e in train] == [1, 0] and problems[0].startswith(f"{multirc / 'train.jsonl'}:1: skipped")


def _write_msgs(root: Path) -> None:
    """MSGS in its release's schema (no `label`: the linguistic feature's, or the surface one's in a surface control
    paradigm) and in BabyLM's (with `label`; one line malformed)."""
    def row(sentence: str, linguistic: int | None, surface: int | None, **extra: Any) -> str:
        return json.dumps({"sentence": sentence, "condition": "training", "linguistic_feature_label": linguistic,
                           "surface_feature_label": surface, "linguistic_feature_type": "syntactic",
                           "linguistic_feature_description": "Is the main verb in the progressive form?",
                           "surface_feature_type": "lexical_content", "UID": "main_verb_lexical_content_the",
                           "sentenceID": "0_training_1_1", "paradigmID": 0, "control_paradigm": False, **extra})

    mixed = root / "msgs" / "main_verb_lexical_content_the"
    mixed.mkdir(parents=True)
    (mixed / "train.jsonl").write_text(row("The cat is sleeping.", 1, 1) + "\n" + row("A cat sleeps.", 0, 0) + "\n")
    (mixed / "test.jsonl").write_text(row("A cat is sleeping.", 1, 0) + "\n" + row("The cat sleeps.", 0, 1) + "\n")
    control = root / "msgs" / "lexical_content_the_control"
    control.mkdir()
    (control / "train.jsonl").write_text(row("The dog ran.", None, 1) + "\n" + row("A dog ran.", None, 0) + "\n")
    (control / "test.jsonl").write_text(row("The fox ran.", None, 1) + "\n")
    babylm = root / "msgs_filtered"
    babylm.mkdir()
    (babylm / "main_verb_control.train.json").write_text(row("He is eating.", 1, None, label=1) + "\n")
    (babylm / "main_verb_control.validation.json").write_text(row("He eats.", 0, None, label=0) + "\n" + "{}\n")


def test_msgs_layouts(tmp_path: Path) -> None:
    _write_msgs(tmp_path)
    sources = {s.task.name: s for s in choose_sources(tmp_path, "msgs")[0]}
    assert set(sources) == {"main_verb_lexical_content_the", "lexical_content_the_control", "main_verb_control"}
    train, evals, _ = read_source(sources["main_verb_lexical_content_the"])
    assert [(e.text_a, e.label) for e in evals] == [("A cat is sleeping.", 1), ("The cat sleeps.", 0)]
    train, evals, _ = read_source(sources["lexical_content_the_control"])
    assert [e.label for e in train + evals] == [1, 0, 1]
    train, evals, problems = read_source(sources["main_verb_control"])
    assert [e.label for e in train + evals] == [1, 0] and len(problems) == 1 and ":2: skipped" in problems[0]
    task = TASKS["main_verb_control"]
    assert (task.learning_rate, task.batch_size, task.max_length, task.select) == (5e-5, 64, 128, "f1")


def test_metrics_against_hand_computations() -> None:
    # tp 3, fn 1, fp 1, tn 3: F1 = 6 / 8; MCC = (3*3 - 1*1) / sqrt(4*4*4*4) = 0.5.
    labels, predictions = np.array([1, 1, 1, 0, 0, 0, 0, 1]), np.array([1, 1, 0, 0, 0, 1, 0, 1])
    assert (accuracy(labels, predictions), binary_f1(labels, predictions),
            matthews_corrcoef(labels, predictions)) == pytest.approx((0.75, 0.75, 0.5))
    # tp 1, fn 1, fp 1, tn 4: F1 = 2 / 4; MCC = (1*4 - 1*1) / sqrt(2*2*5*5) = 0.3.
    labels, predictions = np.array([1, 1, 0, 0, 0, 0, 0]), np.array([1, 0, 1, 0, 0, 0, 0])
    assert (accuracy(labels, predictions), binary_f1(labels, predictions),
            matthews_corrcoef(labels, predictions)) == pytest.approx((5 / 7, 0.5, 0.3))
    # Three classes, confusion [[2,0,0],[0,1,1],[0,1,1]]: (4*6 - 12) / sqrt((36-12) * (36-12)) = 0.5.
    assert matthews_corrcoef(np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 2, 0, 2, 1])) == pytest.approx(0.5)
    assert matthews_corrcoef(np.array([1, 0, 1]), np.array([1, 1, 1])) == 0.0  # constant predictions
    assert matthews_corrcoef(np.array([1, 0, 1, 0]), np.array([0, 1, 0, 1])) == pytest.approx(-1.0)
    assert binary_f1(np.array([0, 0]), np.array([0, 0])) == 0.0  # no positives anywhere


def test_adaptive_pooler_by_hand() -> None:
    pooler = AdaptivePooler(2)
    with torch.no_grad():
        pooler.score.weight.copy_(torch.tensor([[1.0, 2.0]]))
        pooler.score.bias.fill_(0.5)
    states = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    pooled = pooler(states, mask)
    # Row 0: scores 1.5 and 2.5 (the padded 15.5 is masked out): weights 1/(1+e), e/(1+e).
    e = math.e
    assert pooled[0].tolist() == pytest.approx([1 / (1 + e), e / (1 + e)])
    # Row 1: scores 2.5, 4.5, 3.5, all kept.
    w = np.exp([2.5, 4.5, 3.5]) / np.exp([2.5, 4.5, 3.5]).sum()
    assert pooled[1].tolist() == pytest.approx((w[:, None] * states[1].numpy()).sum(0).tolist())
    # Whatever sits at a padded position has no weight.
    changed = states.clone()
    changed[0, 2] = torch.tensor([-1000.0, 1000.0])
    assert torch.allclose(pooler(changed, mask)[0], pooled[0])


@pytest.fixture(scope="module")
def export(debug_data: Path, tmp_path_factory: pytest.TempPathFactory, tiny_params: Any) -> Path:
    """The tiny preset's random initialisation with the sample's tokenizer."""
    return tiny_export(tiny_params, debug_data, tmp_path_factory.mktemp("finetune_export"))


@pytest.fixture(scope="module")
def loaded(export: Path) -> tuple[Any, Any]:
    from flava_jax.eval.torch_pll import load_export

    return load_export(export)


def test_schedule_matches_transformers() -> None:
    total = 137
    reference = transformers.get_linear_schedule_with_warmup(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), math.ceil(0.06 * total), total)
    factor = linear_warmup_decay(total, 0.06)
    for step in range(total + 1):
        assert factor(step) == pytest.approx(reference.lr_lambdas[0](step))


def test_padding_to_the_batch_does_not_change_the_logits(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    classifier = SequenceClassifier(model.flava.text_model, 3).eval()
    examples = [Example("A short one.", "Yes.", 0), Example("A much longer sentence with many more words in it.",
                                                          "And a second segment that is long too.", 1)]
    items = _encode(tokenizer, examples, 128)
    assert items[0]["token_type_ids"][-1] == 1  # the pair's second segment
    with torch.no_grad():
        together = classifier(**_collate(items, tokenizer.pad_token_id, "cpu"))
        alone = torch.cat([classifier(**_collate([item], tokenizer.pad_token_id, "cpu")) for item in items])
    assert torch.allclose(together, alone, atol=1e-5)


def _separable(n: int, seed: int) -> list[Example]:
    """Label 1 iff the sentence holds "river" rather than "house"; the other words are random."""
    rng = random.Random(seed)
    words = "the a old new small city road tree light water stone green blue over under near".split()
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        sentence = rng.sample(words, 6)
        sentence.insert(rng.randrange(7), "river" if label else "house")
        out.append(Example(" ".join(sentence), None, label))
    return out


def test_training_learns_a_separable_task(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    task = TASKS["sst2"]
    settings = Settings.for_task(task, learning_rate=3e-3, batch_size=16, max_steps=60, eval_every=20)
    result = finetune(model.flava.text_model, tokenizer, task, _separable(160, 0), _separable(64, 1), settings)
    run = result["run"]
    assert run["total_steps"] == 60 and [h["step"] for h in run["history"]] == [20, 40, 60]
    assert run["history"][-1]["train_loss"] < 0.5 * run["history"][0]["train_loss"]
    assert result["metrics"]["accuracy"] >= 0.9, run["history"]
    best = max(run["history"], key=lambda h: h["f1"])
    assert result["metrics"] == {k: best[k] for k in ("accuracy", "f1")} and run["best_step"] == best["step"]
    # The fine-tuning worked on a copy: the loaded encoder is unchanged, and still without dropout.
    assert all(not isinstance(m, torch.nn.Dropout) or m.p == 0.0 for m in model.flava.text_model.modules())


def test_epoch_cap_early_stopping_and_cls_pooling(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    task = TASKS["rte"]  # 2036 reference steps, but 10 epochs of 20 examples in batches of 16 are 20 steps
    assert (task.learning_rate, task.batch_size, task.max_steps) == (2e-5, 16, 2036)
    train = [Example(e.text_a, "Near water.", e.label) for e in _separable(20, 2)]
    result = finetune(model.flava.text_model, tokenizer, task, train, train[:8], Settings.for_task(task, eval_every=8))
    assert result["run"]["total_steps"] == 20 and [h["step"] for h in result["run"]["history"]] == [8, 16, 20]
    # A threshold no evaluation can beat: the counter rises at every evaluation after the first.
    settings = Settings.for_task(task, eval_every=2, patience=2, threshold=1.0, pooling="cls")
    run = finetune(model.flava.text_model, tokenizer, task, train, train[:8], settings)["run"]
    assert run["steps"] == 6 and run["stopped_early"] and len(run["history"]) == 3 and run["pooling"] == "cls"


@pytest.mark.slow
def test_evaluate_finetunes_cola_rte_and_msgs(export: Path, shared_data: Path, tmp_path: Path) -> None:
    _write_msgs(tmp_path / "msgs_data")
    result = subprocess.run([sys.executable, "-m", "flava_jax.evaluate", f"--model={export}", "--tasks=glue,msgs",
                             f"--glue_data={shared_data}", "--glue_tasks=cola,rte", f"--out={tmp_path}",
                             f"--msgs_data={tmp_path / 'msgs_data'}", "--msgs_tasks=main_verb_lexical_content_the",
                             "--finetune_max_steps=12", "--finetune_eval_every=6", "--finetune_train_limit=96",
                             "--limit=64"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["glue"]) == {"cola", "rte"}
    assert set(results["glue"]["cola"]) == {"accuracy", "f1", "mcc"} and set(results["glue"]["rte"]) == {"accuracy",
                                                                                                          "f1"}
    for task, metrics in results["glue"].items():
        run = results["glue_runs"][task]
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["f1"] <= 1 and -1 <= metrics.get("mcc", 0) <= 1
        assert (run["train_examples"], run["eval_examples"], run["steps"], run["skipped_lines"]) == (96, 64, 12, 0)
        assert [h["step"] for h in run["history"]] == [6, 12] and run["seed"] == 12
        best = next(h for h in run["history"] if h["step"] == run["best_step"])
        assert metrics == {k: best[k] for k in metrics}
    assert results["glue_runs"]["cola"]["train_file"].endswith("cola_public/raw/in_domain_train.tsv")
    assert results["glue_runs"]["rte"]["learning_rate"] == 2e-5 and results["glue_runs"]["rte"]["batch_size"] == 16
    assert "cola fine-tuning (96 examples): 12/12 steps" in result.stderr
    report = (tmp_path / "results.md").read_text()
    assert "## GLUE / SuperGLUE (fine-tuned)" in report and "| cola |" in report and "| rte |" in report
    assert (tmp_path / "glue.png").stat().st_size > 0
    # MSGS: two training examples in one batch of 64 give 10 epochs of one step; evaluated at 6 and at the end.
    assert set(results["msgs"]) == {"main_verb_lexical_content_the"}
    run = results["msgs_runs"]["main_verb_lexical_content_the"]
    assert (run["steps"], run["eval_examples"], [h["step"] for h in run["history"]]) == (10, 2, [6, 10])
    assert set(results["msgs"]["main_verb_lexical_content_the"]) == {"accuracy", "f1", "mcc"}
    assert "## MSGS (fine-tuned)" in report and (tmp_path / "msgs.png").stat().st_size > 0
