"""Score an export with PyTorch: `python -m flava_jax.evaluate --model=EXPORT --tasks=blimp,pppl --data=DIR
--out=OUT [--limit=N]`.

* blimp: Salazar PLL on every BLiMP pair (DIR holds the 67 `<paradigm>.jsonl`, original or BabyLM-filtered, or
  a `blimp/` folder with them): accuracy per paradigm, per phenomenon (12) and their plain mean, the headline.
  OUT/blimp_predictions.jsonl holds each pair's log2 PLLs; OUT/blimp_phenomena.png plots the phenomena.
* pppl: pseudo-perplexity of the texts in `--pppl_file` (one per line; default DIR/pppl.txt), each truncated to
  300 tokens: the reference's sentence-averaged value and the token-weighted one.

Results go to OUT/results.json (accuracies as fractions) and OUT/results.md. Malformed input lines are reported,
counted and skipped. GLUE/SuperGLUE and MSGS fine-tuning are not in this release yet.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from flava_jax.data.blimp import PHENOMENA, blimp_accuracy, read_blimp
from flava_jax.pll import LN2, pseudo_perplexity
from flava_jax.progress import ProgressLog
from flava_jax.torch_pll import BadExport, TorchPLL, load_export

log = logging.getLogger("flava_jax")
TASKS = ("blimp", "pppl")
PPPL_MAX_LENGTH = 300  # tokens, [CLS] and [SEP] included (the reference's truncation)


def _token_logprobs(model: Any, tokenizer: Any, sentences: list[list[int]], what: str) -> list[np.ndarray]:
    """TorchPLL over `sentences`, with a progress line every few seconds."""
    progress = ProgressLog(what, sum(len(s) - 2 for s in sentences), "masked copies")
    scorer = TorchPLL(model, tokenizer.mask_token_id, tokenizer.pad_token_id,
                      progress=lambda n: progress.update(progress.done + n))
    logprobs = scorer.token_logprobs(sentences)
    progress.finish()
    return logprobs


def blimp_directory(data: str | os.PathLike) -> Path:
    """DIR itself when it holds the paradigm files, else DIR/blimp."""
    data = Path(data)
    return data if any(data.glob("*.jsonl")) else data / "blimp"


def evaluate_blimp(model: Any, tokenizer: Any, data: str | os.PathLike, out: Path,
                   limit: int | None = None) -> dict[str, Any]:
    """BLiMP accuracies (fractions) and OUT/blimp_predictions.jsonl; skipped lines are reported in the result."""
    pairs, problems = read_blimp(blimp_directory(data), limit=limit)
    for problem in problems:
        log.warning("BLiMP: %s", problem)
    if not pairs:
        raise ValueError(f"no BLiMP pairs could be read from {blimp_directory(data)}")
    sentences = [tokenizer(text)["input_ids"] for p in pairs for text in (p.good, p.bad)]
    logprobs = _token_logprobs(model, tokenizer, sentences, f"BLiMP ({len(pairs)} pairs)")
    good, bad = logprobs[0::2], logprobs[1::2]
    with open(out / "blimp_predictions.jsonl", "w", encoding="utf-8") as f:
        for pair, g, b in zip(pairs, good, bad, strict=True):
            f.write(json.dumps({"paradigm": pair.paradigm, "index": pair.index, "pll_good": float(g.sum() / LN2),
                                "pll_bad": float(b.sum() / LN2)}) + "\n")
    flat = blimp_accuracy(pairs, good, bad)
    return {"accuracy": flat["blimp/accuracy"],
            "phenomena": {k[6:]: v for k, v in flat.items() if k.startswith("blimp/") and k != "blimp/accuracy"},
            "paradigms": {k[15:]: v for k, v in flat.items() if k.startswith("blimp_paradigm/")},
            "pairs": len(pairs), "skipped_lines": len(problems)}


def evaluate_pppl(model: Any, tokenizer: Any, path: str | os.PathLike, limit: int | None = None) -> dict[str, Any]:
    """Pseudo-perplexity of the non-empty lines of `path` (the first `limit`)."""
    texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = texts[:limit] if limit else texts
    if not texts:
        raise ValueError(f"{path} holds no text")
    sentences = [tokenizer(t, truncation=True, max_length=PPPL_MAX_LENGTH)["input_ids"] for t in texts]
    logprobs = _token_logprobs(model, tokenizer, sentences, f"PPPL ({len(texts)} texts)")
    return {**pseudo_perplexity(logprobs), "texts": len(texts)}


def write_report(results: dict[str, Any], out: Path, model: str) -> None:
    """results.json, results.md and, with BLiMP, a bar plot of the phenomena."""
    (out / "results.json").write_text(json.dumps({"model": model, **results}, indent=1) + "\n")
    lines = [f"# Evaluation of `{model}`", ""]
    if "blimp" in results:
        b = results["blimp"]
        lines += ["## BLiMP", "", f"Accuracy (mean of the 12 phenomena): **{100 * b['accuracy']:.1f}%** over "
                  f"{b['pairs']} pairs ({b['skipped_lines']} malformed lines skipped).", "",
                  "| phenomenon | accuracy |", "|---|---|"]
        lines += [f"| {name} | {100 * acc:.1f}% |" for name, acc in b["phenomena"].items()]
        lines += ["", "<details><summary>paradigms</summary>", "", "| paradigm | accuracy |", "|---|---|"]
        lines += [f"| {name} | {100 * acc:.1f}% |" for name, acc in b["paradigms"].items()]
        lines += ["", "</details>", ""]
        _plot_phenomena(b["phenomena"], out / "blimp_phenomena.png", model)
    if "pppl" in results:
        p = results["pppl"]
        lines += ["## Pseudo-perplexity", "", "| texts | PPPL (sentence-averaged, the reference's) | "
                  "PPPL (token-weighted) |", "|---|---|---|",
                  f"| {p['texts']} | {p['pppl']:.2f} | {p['pppl_token_weighted']:.2f} |", ""]
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
    ax.set_title(f"BLiMP by phenomenon: {Path(title).name}")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(model_dir: str | os.PathLike, tasks: list[str], data: str | os.PathLike, out: str | os.PathLike,
             limit: int | None = None, pppl_file: str | os.PathLike | None = None,
             device: str = "cpu") -> dict[str, Any]:
    """Run `tasks` on the export at `model_dir`; writes and returns the results."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--tasks: {unknown} not available (this release evaluates {', '.join(TASKS)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_export(model_dir, device)
    results: dict[str, Any] = {}
    if "blimp" in tasks:
        results["blimp"] = evaluate_blimp(model, tokenizer, data, out, limit)
        log.info("BLiMP accuracy %.4f", results["blimp"]["accuracy"])
    if "pppl" in tasks:
        results["pppl"] = evaluate_pppl(model, tokenizer, pppl_file or Path(data) / "pppl.txt", limit)
        log.info("PPPL %.3f (token-weighted %.3f)", results["pppl"]["pppl"], results["pppl"]["pppl_token_weighted"])
    write_report(results, out, str(model_dir))
    return results


def main() -> None:
    """The command line; flags are defined here so that importing this module defines none."""
    model = flags.DEFINE_string("model", None, "An export (python -m flava_jax.export).")
    tasks = flags.DEFINE_list("tasks", ["blimp"], f"Any of {', '.join(TASKS)}.")
    data = flags.DEFINE_string("data", None, "BLiMP's directory (or a directory holding blimp/ and pppl.txt).")
    out = flags.DEFINE_string("out", None, "Where results.json, results.md, plots and predictions go.")
    limit = flags.DEFINE_integer("limit", None, "Score only the first N items of each paradigm or file.")
    pppl_file = flags.DEFINE_string("pppl_file", None, "Texts for pseudo-perplexity, one per line (default "
                                    "DATA/pppl.txt).")
    device = flags.DEFINE_string("device", "cpu", "torch device, e.g. cuda.")

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if not model.value or not out.value or not (data.value or pppl_file.value):
            raise app.UsageError("--model, --out and --data are required")
        logging.getLogger("flava_jax").setLevel(logging.INFO)
        try:
            evaluate(model.value, tasks.value, data.value or ".", out.value, limit.value, pppl_file.value,
                     device.value)
        except (BadExport, ValueError, FileNotFoundError) as e:
            raise app.UsageError(str(e)) from e
        print(f"wrote {Path(out.value) / 'results.json'} and results.md")

    app.run(run)


if __name__ == "__main__":
    main()
