"""Score an export with PyTorch: `python -m flava_jax.evaluate --model=EXPORT --tasks=blimp,pppl,glue,msgs
--data=DIR --out=OUT [--limit=N]`.

* blimp: Salazar PLL on every BLiMP pair (DIR holds the 67 `<paradigm>.jsonl`, original or BabyLM-filtered, or
  a `blimp/` folder with them; other files there are ignored with a warning, or refused with `--blimp_strict`):
  accuracy per paradigm, per phenomenon (12) and their plain mean, the headline.
  OUT/blimp_predictions.jsonl holds each pair's log2 PLLs; OUT/blimp_phenomena.png plots the phenomena.
  `--pll=original,within_word_l2r` adds the within-word-l2r PLL (Kauf & Ivanova 2023) as "blimp_within_word_l2r"
  (same schema as "blimp"; its PLLs as `pll_good_within_word_l2r` / `pll_bad_within_word_l2r` in the
  predictions; OUT/blimp_within_word_l2r_phenomena.png); the default, original, is the paper's metric alone.
* pppl: pseudo-perplexity of the texts in `--pppl_file` (one per line, or prepared data's held-out split; default
  DIR/pppl.txt), each truncated to 300 tokens: the reference's sentence-averaged value and the token-weighted one.
* glue, msgs: fine-tune a fresh copy of the text encoder per task (flava_jax/eval/finetune.py, the reference's head and
  hyperparameters) on the GLUE/SuperGLUE tasks found in `--glue_data` or the MSGS tasks in `--msgs_data` (both
  default to DIR; `--glue_tasks` / `--msgs_tasks` pick some) and report the best evaluation's metrics;
  OUT/glue.png and OUT/msgs.png plot them. `--limit` caps each task's evaluation set, `--finetune_train_limit`
  its training set and `--finetune_max_steps` its steps, for quick runs.
* zeroshot: ImageNet-style zero-shot classification, the paper's "MTR" (flava_jax/common/zeroshot.py), on the labelled
  images in `--zeroshot_data` (ImageNet's validation set as an ImageFolder, the flat devkit layout or the Hub's
  parquet, or any class folders with `--zeroshot_class_names`; default DIR/imagenet): top-1 and top-5 accuracy, with
  `--limit` images per class. The prompts are tokenised without [CLS]/[SEP] as the reference did;
  `--zeroshot_special_tokens` adds them, as training encodes text.
* retrieval: image-text retrieval on the pairs in `--retrieval_data` (prepared data's held-out pairs, or a parquet
  or TSV of pairs: flava_jax/common/pairs.py): R@1, R@5 and R@10 both ways, with the chance level; `--limit` pairs;
  `--itm_rerank=k` reorders each query's first k candidates by the ITM head's score.

Results go to OUT/results.json (accuracies as fractions; fine-tuning as `"glue": {task: {metric: value}}`, with
each run's record under "glue_runs") and OUT/results.md. Malformed input lines are reported, counted and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import app, flags

from flava_jax.common.blimp import PARADIGMS, PHENOMENA, blimp_accuracy, read_blimp
from flava_jax.common.pll import LN2, pseudo_perplexity
from flava_jax.common.progress import ProgressLog
from flava_jax.common.retrieval import recall_keys
from flava_jax.data import prepare, records, vision_tasks
from flava_jax.eval.paper_checkpoint import export_of
from flava_jax.eval.torch_features import image_features, itm_scores, text_features
from flava_jax.eval.torch_pll import BadExport, TorchPLL, load_export, torch_device, word_ids

if TYPE_CHECKING:
    from flava_jax.eval.finetune import Options

log = logging.getLogger("flava_jax")
TASKS = ("blimp", "pppl", "glue", "msgs", "zeroshot", "retrieval")
PPPL_MAX_LENGTH = 300  # tokens, [CLS] and [SEP] included (the reference's truncation)
PAIR_MAX_LENGTH = 77  # tokens: prompts and retrieval texts, as the pair stream truncates (data.pair_max_length)
# --pll value -> (its results.json key, its title); "original" is the paper's (Salazar) PLL.
PLL_METRICS = {"original": ("blimp", "BLiMP"),
               "within_word_l2r": ("blimp_within_word_l2r", "BLiMP, within-word-l2r PLL")}


def _token_logprobs(model: Any, tokenizer: Any, sentences: list[list[int]], what: str,
                    words: list[list[int | None]] | None = None) -> list[np.ndarray]:
    """TorchPLL over `sentences` (within-word-l2r given their `words`), with a progress line every few seconds."""
    progress = ProgressLog(what, sum(len(s) - 2 for s in sentences), "masked copies")
    scorer = TorchPLL(model, tokenizer.mask_token_id, tokenizer.pad_token_id,
                      progress=lambda n: progress.update(progress.done + n))
    logprobs = scorer.token_logprobs(sentences, words)
    progress.finish()
    return logprobs


def blimp_directory(data: str | os.PathLike) -> Path:
    """DIR itself when it holds paradigm files, else DIR/blimp."""
    data = Path(data)
    return data if any(path.stem in PARADIGMS for path in data.glob("*.json*")) else data / "blimp"


def evaluate_blimp(model: Any, tokenizer: Any, data: str | os.PathLike, out: Path, limit: int | None = None,
                   pll: Sequence[str] = ("original",), strict: bool = False) -> dict[str, dict[str, Any]]:
    """BLiMP accuracies (fractions) under each PLL metric in `pll`, keyed as in results.json (PLL_METRICS), and
    OUT/blimp_predictions.jsonl; skipped lines are reported in each result. `strict` refuses files in the BLiMP
    directory that are not paradigm files (read_blimp)."""
    pairs, problems = read_blimp(blimp_directory(data), limit=limit, strict=strict)
    for problem in problems:
        log.warning("BLiMP: %s", problem)
    if not pairs:
        raise ValueError(f"no BLiMP pairs could be read from {blimp_directory(data)}")
    texts = [text for p in pairs for text in (p.good, p.bad)]
    sentences = [tokenizer(text)["input_ids"] for text in texts]
    predictions: list[dict[str, Any]] = [{"paradigm": p.paradigm, "index": p.index} for p in pairs]
    results = {}
    for metric in pll:
        words = word_ids(tokenizer, texts, sentences) if metric == "within_word_l2r" else None
        logprobs = _token_logprobs(model, tokenizer, sentences, f"BLiMP, {metric} PLL ({len(pairs)} pairs)", words)
        good, bad = logprobs[0::2], logprobs[1::2]
        suffix = "" if metric == "original" else f"_{metric}"
        for row, g, b in zip(predictions, good, bad, strict=True):
            row[f"pll_good{suffix}"], row[f"pll_bad{suffix}"] = float(g.sum() / LN2), float(b.sum() / LN2)
        flat = blimp_accuracy(pairs, good, bad)
        results[PLL_METRICS[metric][0]] = {
            "accuracy": flat["blimp/accuracy"],
            "phenomena": {k[6:]: v for k, v in flat.items() if k.startswith("blimp/") and k != "blimp/accuracy"},
            "paradigms": {k[15:]: v for k, v in flat.items() if k.startswith("blimp_paradigm/")},
            "pairs": len(pairs), "skipped_lines": len(problems)}
    with open(out / "blimp_predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in predictions)
    return results


def evaluate_pppl(model: Any, tokenizer: Any, path: str | os.PathLike, limit: int | None = None) -> dict[str, Any]:
    """Pseudo-perplexity of the non-empty lines of `path`, or of the held-out texts of prepared data when `path` is
    a `python -m flava_jax.data.prepare` directory (the first `limit`)."""
    if (Path(path) / prepare.MANIFEST).is_file():
        texts = [records.decode_text(r).strip() for r in prepare.read_stream(path, "heldout")]
        texts = [t for t in texts if t]
    else:
        texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = texts[:limit] if limit else texts
    if not texts:
        raise ValueError(f"{path} holds no text")
    sentences = [tokenizer(t, truncation=True, max_length=PPPL_MAX_LENGTH)["input_ids"] for t in texts]
    logprobs = _token_logprobs(model, tokenizer, sentences, f"PPPL ({len(texts)} texts)")
    return {**pseudo_perplexity(logprobs), "texts": len(texts)}


@dataclasses.dataclass(frozen=True)
class VisionOptions:
    """The zero-shot and retrieval tasks' options (module docstring); None data means DIR/imagenet / prepared DIR."""

    zeroshot_data: str | None = None
    class_names: str | None = None
    templates: int | None = None
    special_tokens: bool = False
    retrieval_data: str | None = None
    itm_rerank: int = 0


def _encoder(tokenizer: Any) -> vision_tasks.Encode:
    return lambda text, max_length: tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


def evaluate_zeroshot(model: Any, tokenizer: Any, path: str | os.PathLike, options: VisionOptions,
                      limit: int | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Top-1/top-5 zero-shot accuracy (fractions) on the labelled images at `path`, and the logits."""
    task = vision_tasks.zeroshot_task(path, _encoder(tokenizer), model.config.image_config.image_size,
                                      PAIR_MAX_LENGTH, limit, options.class_names, options.templates,
                                      options.special_tokens)
    return vision_tasks.score_zeroshot(task, lambda ids: text_features(model, ids, tokenizer.pad_token_id),
                                       lambda pixels: image_features(model, pixels))


def evaluate_retrieval(model: Any, tokenizer: Any, path: str | os.PathLike, limit: int | None = None,
                       itm_rerank: int = 0) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Image-text recall at 1, 5 and 10 both ways (fractions) on the pairs at `path`, each query's first
    `itm_rerank` candidates reordered by the ITM head; and the scores ranked each way."""
    task = vision_tasks.retrieval_task(path, _encoder(tokenizer), model.config.image_config.image_size,
                                       PAIR_MAX_LENGTH, limit)
    pad = tokenizer.pad_token_id
    return vision_tasks.score_retrieval(task, lambda ids: text_features(model, ids, pad),
                                        lambda pixels: image_features(model, pixels),
                                        lambda ids, pixels: itm_scores(model, ids, pixels, pad), itm_rerank)


def write_report(results: dict[str, Any], out: Path, model: str, export: Path) -> None:
    """results.json (with `model` as given and the `export` scored), results.md and bar plots of BLiMP's phenomena
    and the fine-tuned tasks' metrics."""
    (out / "results.json").write_text(json.dumps({"model": model, "export": str(export), **results}, indent=1)
                                      + "\n")
    lines = [f"# Evaluation of `{model}`", ""]
    for key, title in PLL_METRICS.values():
        if key not in results:
            continue
        b = results[key]
        lines += [f"## {title}", "", f"Accuracy (mean of the 12 phenomena): **{100 * b['accuracy']:.1f}%** over "
                  f"{b['pairs']} pairs ({b['skipped_lines']} malformed lines skipped).", "",
                  "| phenomenon | accuracy |", "|---|---|"]
        lines += [f"| {name} | {100 * acc:.1f}% |" for name, acc in b["phenomena"].items()]
        lines += ["", "<details><summary>paradigms</summary>", "", "| paradigm | accuracy |", "|---|---|"]
        lines += [f"| {name} | {100 * acc:.1f}% |" for name, acc in b["paradigms"].items()]
        lines += ["", "</details>", ""]
        _plot_phenomena(b["phenomena"], out / f"{key}_phenomena.png",
                        f"{title} by phenomenon: {Path(model).name}")
    if "pppl" in results:
        p = results["pppl"]
        lines += ["## Pseudo-perplexity", "", "| texts | PPPL (sentence-averaged, the reference's) | "
                  "PPPL (token-weighted) |", "|---|---|---|",
                  f"| {p['texts']} | {p['pppl']:.2f} | {p['pppl_token_weighted']:.2f} |", ""]
    if "zeroshot" in results:
        z = results["zeroshot"]
        lines += ["## Zero-shot classification (MTR)", "", "| images | classes | templates | [CLS]/[SEP] | top-1 | "
                  "top-5 | chance top-1 | skipped |", "|---|---|---|---|---|---|---|---|",
                  f"| {z['images']} | {z['classes']} | {z['templates']} | {'yes' if z['special_tokens'] else 'no'} "
                  f"| {100 * z['top1']:.2f}% | {100 * z['top5']:.2f}% | {100 / z['classes']:.2f}% | "
                  f"{sum(z['skipped'].values())} |", ""]
    if "retrieval" in results:
        r = results["retrieval"]
        lines += ["## Image-text retrieval", "", f"{r['pairs']} texts, {r['images']} images "
                  f"({sum(r['skipped'].values())} pairs or images skipped). Recall, ours (chance):", "",
                  "| | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
        for way, title in (("i2t", "image → text"), ("t2i", "text → image")):
            lines.append(f"| {title} | " + " | ".join(
                "–" if r[f"{way}_r{k}"] is None else
                f"{100 * r[f'{way}_r{k}']:.1f}% ({100 * r['chance'][f'{way}_r{k}']:.1f}%)" for k in (1, 5, 10)) + " |")
        lines.append("")
    for suite in ("glue", "msgs"):
        if suite in results:
            from flava_jax.eval.finetune import plot_suite, report_section  # torch, already loaded by the fine-tuning

            lines += report_section(suite, results[suite], results[f"{suite}_runs"])
            plot_suite(suite, results[suite], out / f"{suite}.png", model)
    (out / "results.md").write_text("\n".join(lines))


def _plot_phenomena(phenomena: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PHENOMENA if n in phenomena] + sorted(set(phenomena) - set(PHENOMENA))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names, [100 * phenomena[n] for n in names], color="tab:blue")
    ax.axvline(50, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(model_dir: str | os.PathLike, tasks: list[str], data: str | os.PathLike, out: str | os.PathLike,
             limit: int | None = None, pppl_file: str | os.PathLike | None = None,
             device: str = "auto", finetune: Options | None = None,
             pll: Sequence[str] = ("original",), blimp_strict: bool = False,
             vision: VisionOptions | None = None) -> dict[str, Any]:
    """Run `tasks` on the export at `model_dir`; writes and returns the results. `finetune` holds the glue and
    msgs tasks' options (default: every task found in `data`, the reference's settings); `pll` the BLiMP PLL
    metrics (PLL_METRICS); `blimp_strict` refuses stray files among BLiMP's; `vision` the zeroshot and retrieval
    tasks' options; `device` a torch device or "auto" (CUDA where torch has it)."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--tasks: {unknown} not available (this release evaluates {', '.join(TASKS)})")
    if not pll or set(pll) - set(PLL_METRICS):
        raise ValueError(f"--pll: {list(pll)} is not a list of {', '.join(PLL_METRICS)}")
    device = torch_device(device)
    vision = vision or VisionOptions()
    export = export_of(str(model_dir))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_export(export, device)
    results: dict[str, Any] = {}
    if "blimp" in tasks:
        results.update(evaluate_blimp(model, tokenizer, data, out, limit, pll, blimp_strict))
        for key, title in PLL_METRICS.values():
            if key in results:
                log.info("%s accuracy %.4f", title, results[key]["accuracy"])
    if "pppl" in tasks:
        results["pppl"] = evaluate_pppl(model, tokenizer, pppl_file or Path(data) / "pppl.txt", limit)
        log.info("PPPL %.3f (token-weighted %.3f)", results["pppl"]["pppl"], results["pppl"]["pppl_token_weighted"])
    if "zeroshot" in tasks:
        results["zeroshot"], _ = evaluate_zeroshot(model, tokenizer, vision.zeroshot_data or Path(data) / "imagenet",
                                                   vision, limit)
        log.info("zero-shot top-1 %.4f, top-5 %.4f", results["zeroshot"]["top1"], results["zeroshot"]["top5"])
    if "retrieval" in tasks:
        results["retrieval"], *_ = evaluate_retrieval(model, tokenizer, vision.retrieval_data or data, limit,
                                                      vision.itm_rerank)
        log.info("retrieval: %s", {k: results["retrieval"][k] for k in recall_keys()})
    for suite in ("glue", "msgs"):
        if suite in tasks:
            from flava_jax.eval.finetune import Options, finetune_suite  # torch at import: only when fine-tuning

            results[suite], results[f"{suite}_runs"] = finetune_suite(model, tokenizer, suite, finetune or Options(),
                                                                      data, limit, device)
            log.info("%s: %s", suite, results[suite])
    write_report(results, out, str(model_dir), export)
    return results


def main() -> None:
    """The command line; flags are defined here so that importing this module defines none."""
    model = flags.DEFINE_string("model", None, "An export (python -m flava_jax.export), or one of the paper's "
                                "released checkpoints: a Hub id (theodor1289/bestckpt_half_sized_...) or its local "
                                "snapshot, converted once to an export beside it.")
    tasks = flags.DEFINE_list("tasks", ["blimp"], f"Any of {', '.join(TASKS)}.")
    data = flags.DEFINE_string("data", None, "BLiMP's directory (or a directory holding blimp/ and pppl.txt).")
    out = flags.DEFINE_string("out", None, "Where results.json, results.md, plots and predictions go.")
    limit = flags.DEFINE_integer("limit", None, "Score only the first N items of each paradigm or file.", lower_bound=1)
    pppl_file = flags.DEFINE_string("pppl_file", None, "Texts for pseudo-perplexity: a file with one per line, or "
                                    "prepared data (its held-out split); default DATA/pppl.txt.")
    device = flags.DEFINE_string("device", "auto", "torch device (cpu, cuda, cuda:1, mps), or auto: CUDA where "
                                 "torch has it, else the CPU.")
    zeroshot_data = flags.DEFINE_string("zeroshot_data", None, "Labelled images for --tasks=zeroshot: ImageNet's "
                                        "validation set (ImageFolder, flat with the devkit, or the Hub's parquet), "
                                        "or class folders with --zeroshot_class_names (default DATA/imagenet).")
    class_names = flags.DEFINE_string("zeroshot_class_names", None, "For class folders other than ImageNet's: one "
                                      "line per class, 'folder<TAB>class name' (or just the name).")
    templates = flags.DEFINE_integer("zeroshot_templates", None, "Use the first N of the 80 prompt templates "
                                     "(default all, as the reference).", lower_bound=1)
    special_tokens = flags.DEFINE_boolean("zeroshot_special_tokens", False, "Encode the prompts with [CLS]/[SEP], "
                                          "as training encodes text (the reference left them out).")
    retrieval_data = flags.DEFINE_string("retrieval_data", None, "Pairs for --tasks=retrieval: prepared data (its "
                                         "held-out pairs), or a parquet or TSV of text and image (default DATA).")
    itm_rerank = flags.DEFINE_integer("itm_rerank", 0, "Retrieval: reorder each query's first N candidates by the "
                                      "ITM head's score (0: rank by the contrastive embeddings alone).",
                                      lower_bound=0)
    blimp_strict = flags.DEFINE_boolean("blimp_strict", False, "Refuse a BLiMP directory holding files other than "
                                        "the 67 paradigms (by default they are named in a warning and ignored).")
    pll = flags.DEFINE_list("pll", ["original"], "BLiMP PLL metrics: original (Salazar et al., the paper's) and/or "
                            "within_word_l2r (Kauf & Ivanova 2023, also masks the rest of a word to the right).")
    glue_data = flags.DEFINE_string("glue_data", None, "GLUE/SuperGLUE fine-tuning data: BabyLM's filtered JSON "
                                    "lines, GLUE TSVs or SuperGLUE JSON lines, here or up to 3 levels below "
                                    "(default DATA).")
    msgs_data = flags.DEFINE_string("msgs_data", None, "MSGS fine-tuning data (default DATA).")
    glue_tasks = flags.DEFINE_list("glue_tasks", None, "GLUE/SuperGLUE tasks to fine-tune, e.g. cola,rte (default "
                                   "every task with training and evaluation files in --glue_data).")
    msgs_tasks = flags.DEFINE_list("msgs_tasks", None, "MSGS tasks (default every one found in --msgs_data).")
    max_steps = flags.DEFINE_integer("finetune_max_steps", None, "Fine-tuning steps per task, replacing the "
                                     "reference's (still at most 10 epochs).", lower_bound=1)
    eval_every = flags.DEFINE_integer("finetune_eval_every", None, "Evaluate every N fine-tuning steps (default "
                                      "200).", lower_bound=1)
    train_limit = flags.DEFINE_integer("finetune_train_limit", None, "Fine-tune on the first N training examples "
                                       "of each task only.", lower_bound=1)
    max_length = flags.DEFINE_integer("finetune_max_length", None, "Fine-tuning truncation in tokens (default "
                                      "512; MSGS 128).", lower_bound=1)
    pooling = flags.DEFINE_enum("finetune_pooling", None, ["adaptive", "cls"], "The classifier's pooling: the "
                                "reference's AdaptivePooler (default: adaptive) or the [CLS] state.")
    seed = flags.DEFINE_integer("seed", None, "Fine-tuning seed (default: the reference's 12).")

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if not model.value or not out.value or not (data.value or pppl_file.value or glue_data.value
                                                     or msgs_data.value or zeroshot_data.value
                                                     or retrieval_data.value):
            raise app.UsageError("--model, --out and --data are required")
        logging.getLogger("flava_jax").setLevel(logging.INFO)
        from flava_jax.eval.finetune import Options

        options = Options(glue_data=glue_data.value, msgs_data=msgs_data.value,
                          glue_tasks=tuple(glue_tasks.value) if glue_tasks.value else None,
                          msgs_tasks=tuple(msgs_tasks.value) if msgs_tasks.value else None,
                          max_steps=max_steps.value, eval_every=eval_every.value, train_limit=train_limit.value,
                          seed=seed.value, max_length=max_length.value, pooling=pooling.value)
        try:
            vision = VisionOptions(zeroshot_data.value, class_names.value, templates.value, special_tokens.value,
                                   retrieval_data.value, itm_rerank.value)
            evaluate(model.value, tasks.value, data.value or ".", out.value, limit.value, pppl_file.value,
                     device.value, options, pll.value, blimp_strict.value, vision)
        except (BadExport, ValueError, FileNotFoundError) as e:
            raise app.UsageError(str(e)) from e
        print(f"wrote {Path(out.value) / 'results.json'} and results.md")

    app.run(run)


if __name__ == "__main__":
    main()
