"""Fine-tune an export's text encoder on GLUE/SuperGLUE/MSGS classification tasks with PyTorch, as the reference
does (docs/reference.md#fine-tuning).

The model is `flava.text_model` of the export (text hidden and attention dropout set to 0.1) under the reference's
head: an AdaptivePooler (a learned score per token, softmax, times the attention mask, renormalised, then the weighted
mean of the token states), dropout 0.1 and a linear layer; `pooling="cls"` takes the first token's state instead.
Training is HF Trainer's defaults as the reference used them: cross-entropy, AdamW (weight decay 0, betas 0.9/0.999, eps
1e-8), gradients clipped to norm 1, a linear warmup over 6% of the steps then linear decay to 0. The step budget is the
task's `max_steps` (the table in docs/reference.md#fine-tuning) but at most 10 epochs. Every `eval_every` steps, and
after the last one, the evaluation set is scored; the best evaluation by the task's selection metric (F1 for binary
tasks, accuracy otherwise) is reported, and training stops once `patience` evaluations in a row have not improved on the
best by more than `threshold`.

Batches are padded to their longest example, not to `max_length` as the reference pads: the attention mask and
the pooler's mask give padded positions no weight, so the logits are the same up to float rounding, for much less
compute. Inputs are truncated to `max_length`, or to the model's position-embedding count when that is smaller.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flava_jax.common.progress import ProgressLog
from flava_jax.eval.glue import Example, Source, Task, choose_sources, compute_metrics, label_list, read_source

log = logging.getLogger("flava_jax")
SUITES = {"glue": "GLUE / SuperGLUE", "msgs": "MSGS"}
METRIC_ORDER = ("accuracy", "f1", "mcc")


@dataclasses.dataclass(frozen=True)
class Settings:
    """One fine-tuning run's hyperparameters; `for_task` gives the reference's."""

    learning_rate: float
    batch_size: int
    max_steps: int | None = None  # None: the epoch limit alone
    max_epochs: int = 10
    warmup_ratio: float = 0.06
    eval_every: int = 200
    patience: int = 10
    threshold: float = 0.001
    seed: int = 12
    max_length: int = 512
    pooling: str = "adaptive"  # or "cls"
    dropout: float = 0.1
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64

    @classmethod
    def for_task(cls, task: Task, **overrides: Any) -> Settings:
        """The task's reference values, then `overrides` (None values are ignored)."""
        values = dict(learning_rate=task.learning_rate, batch_size=task.batch_size, max_steps=task.max_steps,
                      max_length=task.max_length)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Options:
    """What `python -m flava_jax.evaluate` asks of fine-tuning; None leaves the reference's value."""

    glue_data: str | os.PathLike | None = None  # None: evaluate's --data
    msgs_data: str | os.PathLike | None = None
    glue_tasks: tuple[str, ...] | None = None  # None: every task found
    msgs_tasks: tuple[str, ...] | None = None
    max_steps: int | None = None
    eval_every: int | None = None
    train_limit: int | None = None
    seed: int | None = None
    max_length: int | None = None
    pooling: str | None = None


class AdaptivePooler(nn.Module):
    """The weighted mean of the token states, weights = softmax of a learned score per token, restricted to the
    attention mask. The reference takes the softmax over every position, multiplies by the mask and renormalises;
    softmax over the unmasked positions only is the same in exact arithmetic, and stays finite when a padded
    position's score dwarfs the others (there the reference's weights underflow to 0 / 0)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(states).squeeze(-1).masked_fill(attention_mask == 0, -torch.inf)
        return torch.einsum("bt,bth->bh", torch.softmax(scores, dim=-1), states)


class SequenceClassifier(nn.Module):
    """text encoder -> pooler (adaptive or [CLS]) -> dropout -> linear."""

    def __init__(self, text_model: nn.Module, num_labels: int, pooling: str = "adaptive",
                 dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in ("adaptive", "cls"):
            raise ValueError(f"pooling must be 'adaptive' or 'cls', not {pooling!r}")
        config = text_model.config
        self.text_model = text_model
        self.pooler = AdaptivePooler(config.hidden_size) if pooling == "adaptive" else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        # As HF's post_init initialises the reference's head: normal(0, initializer_range), zero bias.
        for layer in (self.classifier, *([self.pooler.score] if self.pooler else [])):
            nn.init.normal_(layer.weight, std=config.initializer_range)
            nn.init.zeros_(layer.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        states = self.text_model(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state
        pooled = states[:, 0] if self.pooler is None else self.pooler(states, attention_mask.to(states.dtype))
        return self.classifier(self.dropout(pooled))


def set_text_dropout(text_model: nn.Module, p: float) -> None:
    """The reference overrides the text encoder's hidden and attention dropout, both to 0.1 (pretraining used 0)."""
    text_model.config.hidden_dropout_prob = text_model.config.attention_probs_dropout_prob = p
    for module in text_model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def linear_warmup_decay(total_steps: int, warmup_ratio: float) -> Any:
    """HF's get_linear_schedule_with_warmup as a LambdaLR factor, warmup = ceil(ratio * total) as HF counts it."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _encode(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[dict[str, list[int]]]:
    pairs = examples[0].text_b is not None if examples else False
    encoded = tokenizer([e.text_a for e in examples], [e.text_b for e in examples] if pairs else None,
                        truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(examples))]


def _collate(items: Sequence[dict[str, list[int]]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Padded to the longest item: see the module docstring for why this equals the reference's max-length
    padding."""
    length = max(len(item["input_ids"]) for item in items)
    batch: dict[str, torch.Tensor] = {}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0)):
        if key in items[0]:
            batch[key] = torch.tensor([item[key] + [fill] * (length - len(item[key])) for item in items])
    batch["attention_mask"] = torch.tensor([[1] * len(item["input_ids"]) + [0] * (length - len(item["input_ids"]))
                                            for item in items])
    return {k: v.to(device) for k, v in batch.items()}


def predict(model: SequenceClassifier, encoded: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int,
            device: str) -> np.ndarray:
    """Predicted label ids, in the order of `encoded`; batches of similar lengths, for speed."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    predictions = np.zeros(len(encoded), np.int64)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            logits = model(**_collate([encoded[i] for i in rows], pad_id, device))
            predictions[rows] = logits.argmax(dim=-1).cpu().numpy()
    return predictions


def finetune(text_model: nn.Module, tokenizer: Any, task: Task, train: Sequence[Example], evals: Sequence[Example],
             settings: Settings, device: str = "cpu") -> dict[str, Any]:
    """Fine-tune a copy of `text_model` on `train`, scoring `evals` as it goes. Returns the best evaluation's
    metrics (fractions) and the run's record: steps, the best step, whether it stopped early, every evaluation
    with the mean training loss since the one before."""
    if not train or not evals:
        raise ValueError(f"{task.name}: {len(train)} training and {len(evals)} evaluation examples; need both")
    labels = label_list(train, evals)
    if ("f1" in task.metrics or "mcc" in task.metrics) and len(labels) != 2:
        raise ValueError(f"{task.name} is a binary task but its data has the labels {labels}")
    label_ids = {label: i for i, label in enumerate(labels)}
    torch.manual_seed(settings.seed)  # the head's initialisation and the dropout masks
    model = copy.deepcopy(text_model)
    set_text_dropout(model, settings.dropout)
    model = SequenceClassifier(model, len(labels), settings.pooling, settings.dropout).to(device)
    max_length = min(settings.max_length, model.text_model.config.max_position_embeddings)
    train_items, eval_items = (_encode(tokenizer, split, max_length) for split in (train, evals))
    train_labels = torch.tensor([label_ids[e.label] for e in train])
    eval_labels = np.array([label_ids[e.label] for e in evals])

    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total = settings.max_epochs * steps_per_epoch
    total = min(total, settings.max_steps) if settings.max_steps else total
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(total, settings.warmup_ratio))
    shuffle = torch.Generator().manual_seed(settings.seed)

    progress = ProgressLog(f"{task.name} fine-tuning ({len(train)} examples)", total, "steps")
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    stale, losses, step = 0, [], 0
    while step < total and stale < settings.patience:
        for batch_rows in torch.randperm(len(train), generator=shuffle).split(settings.batch_size):
            model.train()
            batch = _collate([train_items[i] for i in batch_rows], tokenizer.pad_token_id, device)
            loss = nn.functional.cross_entropy(model(**batch), train_labels[batch_rows].to(device))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
            progress.update(step, f"loss {np.mean(losses[-50:]):.4f}")
            if step % settings.eval_every and step < total:
                continue
            predictions = predict(model, eval_items, tokenizer.pad_token_id, settings.eval_batch_size, device)
            metrics = compute_metrics(task.metrics, eval_labels, predictions)
            history.append({"step": step, "train_loss": float(np.mean(losses)), **metrics})
            losses = []
            log.info("%s step %d: %s", task.name, step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            # HF's EarlyStoppingCallback: an improvement must beat the best so far by more than the threshold;
            # the best model is the best evaluation, by any margin.
            value = metrics[task.select]
            stale = 0 if best is None or value - best[task.select] > settings.threshold else stale + 1
            if best is None or value > best[task.select]:
                best = {"step": step, **metrics}
            if step >= total or stale >= settings.patience:
                break
    assert best is not None  # at least the last step is evaluated
    progress.finish(f"best {task.select} {best[task.select]:.4f} at step {best['step']}")
    return {"metrics": {k: best[k] for k in task.metrics},
            "run": {"labels": [str(label) for label in labels], "train_examples": len(train),
                    "eval_examples": len(evals), "learning_rate": settings.learning_rate,
                    "batch_size": settings.batch_size, "max_length": max_length, "pooling": settings.pooling,
                    "seed": settings.seed, "total_steps": total, "steps": step, "best_step": best["step"],
                    "selection_metric": task.select, "stopped_early": step < total, "history": history}}


def finetune_suite(model: Any, tokenizer: Any, suite: str, options: Options, data: str | os.PathLike,
                   eval_limit: int | None = None, device: str = "cpu"
                   ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Fine-tune `model.flava.text_model` (a fresh copy per task) on the tasks of `suite` ("glue" or "msgs") found
    in the options' directory for it, else in `data`; each evaluation set cut to its first `eval_limit` examples.
    Returns ({task: {metric: value}}, {task: run record with its files and skipped lines})."""
    names = options.glue_tasks if suite == "glue" else options.msgs_tasks
    data = (options.glue_data if suite == "glue" else options.msgs_data) or data
    sources, notes = choose_sources(data, suite, names)
    for note in notes:
        log.info("%s: %s", suite, note)
    if not sources:
        raise ValueError(f"no {suite} task has both training and evaluation files in {data}")
    metrics: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, Any]] = {}
    for source in sources:
        result = _finetune_source(model.flava.text_model, tokenizer, source, options, eval_limit, device)
        metrics[source.task.name], runs[source.task.name] = result["metrics"], result["run"]
    return metrics, runs


def _finetune_source(text_model: nn.Module, tokenizer: Any, source: Source, options: Options,
                     eval_limit: int | None, device: str) -> dict[str, Any]:
    train, evals, problems = read_source(source, options.train_limit, eval_limit)
    for problem in problems:
        log.warning("%s: %s", source.task.name, problem)
    log.info("%s: %d training examples from %s, %d evaluation examples from %s", source.task.name, len(train),
             source.train, len(evals), ", ".join(map(str, source.evals)))
    settings = Settings.for_task(source.task, max_steps=options.max_steps, eval_every=options.eval_every,
                                 seed=options.seed, max_length=options.max_length, pooling=options.pooling)
    result = finetune(text_model, tokenizer, source.task, train, evals, settings, device)
    result["run"].update(train_file=str(source.train), eval_files=[str(p) for p in source.evals],
                         skipped_lines=len(problems))
    return result


def report_section(suite: str, metrics: dict[str, dict[str, float]], runs: dict[str, dict[str, Any]]) -> list[str]:
    """results.md lines for one suite: a table of each task's best evaluation."""
    names = [m for m in METRIC_ORDER if any(m in v for v in metrics.values())]
    lines = [f"## {SUITES[suite]} (fine-tuned)", "", "| task | " + " | ".join(names) + " | best step / steps | "
             "train / eval examples | skipped lines |", "|---|" + "---|" * (len(names) + 3)]
    for task, values in metrics.items():
        run = runs[task]
        cells = [f"{100 * values[m]:.1f}" if m in values else "" for m in names]
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {run['best_step']} / {run['steps']} | "
                     f"{run['train_examples']} / {run['eval_examples']} | {run['skipped_lines']} |")
    return [*lines, "", "Accuracy and F1 in %, MCC × 100; the best evaluation by F1 (binary tasks) or accuracy.", ""]


def plot_suite(suite: str, metrics: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Grouped bars: each task's metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in METRIC_ORDER if any(m in v for v in metrics.values())]
    tasks = list(metrics)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(tasks) + 2), 4))
    for i, name in enumerate(names):
        ax.bar(np.arange(len(tasks)) + (i - (len(names) - 1) / 2) * width,
               [100 * metrics[t].get(name, np.nan) for t in tasks], width, label=name)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylim(min(0.0, 100 * min(v for t in metrics.values() for v in t.values()) - 5), 100)
    ax.set_ylabel("% (MCC × 100)")
    ax.set_title(f"{SUITES[suite]} fine-tuning: {Path(title).name}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
