"""Export a training checkpoint to a directory transformers loads:
`python -m flava_jax.export --workdir=DIR --out=EXPORT [--step=N|best|latest] [--overwrite]`.

EXPORT gets config.json + model.safetensors (`transformers.FlavaForPreTraining.from_pretrained(EXPORT)`, no
missing or unexpected weights) and the run's tokenizer (`AutoTokenizer.from_pretrained(EXPORT)`, the same ids).
The model config and the tokenizer come from DIR/run.json, which the trainer writes when a run starts.

`python -m flava_jax.export --from=REPO_ID_OR_DIR --out=EXPORT` converts one of the paper's released checkpoints
(a Hub id, or its local snapshot: flava_jax/eval/paper_checkpoint.py) into such an export instead, which the
evaluator scores and the trainer starts from (`--config.init_from=EXPORT`). It needs the eval extra (torch).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags

from flava_jax.data.tokenizer import load_tokenizer
from flava_jax.model.config import FlavaConfig
from flava_jax.model.hf_io import save_pretrained
from flava_jax.train import checkpoint as checkpoint_lib
from flava_jax.train.run_file import RUN_FILE


class ExportError(RuntimeError):
    """The workdir cannot be exported as asked; the message says why and what to do."""


def _check_out(out: Path, overwrite: bool) -> None:
    """A non-empty `out` (a previous export included: which run and step it held is not recorded) is replaced only
    when asked: files of its own that the export does not write would otherwise sit beside the new ones."""
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present and not overwrite:
        listed = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise ExportError(f"--out={out} is not empty (it holds {listed}); choose an empty or new directory, or pass "
                          f"--overwrite to write over it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out={out} is a file, not a directory")


def _restore(checkpoints: checkpoint_lib.Checkpoints, step: int, steps: list[int], workdir: Path) -> Any:
    """The verified state of `step`; a corrupt one is an error listing the intact steps to export instead."""
    try:
        return checkpoints.restore(None, step=step)[0]
    except checkpoint_lib.CorruptCheckpoint as e:
        good = [s for s in steps if s != step and checkpoint_lib.verify(checkpoints.step_dir(s)) in (None, "")]
        advice = f"the intact ones are steps {good}: use --step=N with one of them, e.g. --step={good[-1]}" if good \
            else f"no other checkpoint of {workdir} is intact"
        raise ExportError(f"{e}; {advice}") from e


def export(workdir: str | os.PathLike, out: str | os.PathLike, step: str | int = "latest",
           overwrite: bool = False) -> tuple[Path, int]:
    """Write the checkpoint `step` ("latest", "best" by pseudo-perplexity, or a step number) of `workdir` as an HF
    directory at `out` (refusing a non-empty one unless `overwrite`), after verifying its checksums; returns (out,
    the step exported)."""
    workdir, out = Path(workdir), Path(out)
    _check_out(out, overwrite)
    run_file = workdir / RUN_FILE
    if not run_file.is_file():
        raise ExportError(f"{run_file} is missing: is {workdir} a flava_jax training workdir? (the trainer writes "
                          f"it when a run starts)")
    run = json.loads(run_file.read_text())
    checkpoints = checkpoint_lib.Checkpoints(workdir / "checkpoints", async_save=False)
    try:
        steps = checkpoints.all_steps()
        if not steps:
            raise ExportError(f"{workdir / 'checkpoints'} holds no complete checkpoint")
        if step == "latest":
            chosen = checkpoints.latest_step()
        elif step == "best":
            chosen = checkpoints.best_step()
            if chosen is None:
                raise ExportError(f"no checkpoint in {workdir} has a pseudo-perplexity (evaluation did not run); "
                                  f"use --step=latest or one of {steps}")
        else:
            chosen = int(step)
            if chosen not in steps:
                raise ExportError(f"no checkpoint at step {chosen} in {workdir}; there are {steps}")
        state = _restore(checkpoints, chosen, steps, workdir)
    finally:
        checkpoints.close()
    config = FlavaConfig(**run["model"])
    params = jax.tree.map(np.asarray, state["params"])
    tokenizer_path = Path(run["tokenizer"])
    if not tokenizer_path.is_file():
        raise ExportError(f"the run's tokenizer {tokenizer_path} (from {run_file}) is missing; restore the prepared "
                          f"data directory, or fix the path in {run_file}")
    return save_pretrained(config, params, out, tokenizer=load_tokenizer(tokenizer_path)), chosen


def convert_released(source: str, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """One of the paper's released checkpoints (`source`: a Hub id or a local snapshot) as an export at `out`;
    exits with one line when it cannot be."""
    from flava_jax.eval.paper_checkpoint import export_of  # torch: only when converting
    from flava_jax.eval.torch_pll import BadExport

    try:
        _check_out(Path(out), overwrite)
        return export_of(source, out)
    except (ExportError, BadExport) as e:
        sys.exit(f"error: {e}")


def main() -> None:
    """The command line; flags are defined here so that importing this module defines none."""
    workdir = flags.DEFINE_string("workdir", None, "The training run's directory.")
    out_dir = flags.DEFINE_string("out", None, "Where to write the HF directory.")
    step_flag = flags.DEFINE_string("step", "latest", "latest, best (lowest pseudo-perplexity) or a step number.")
    overwrite = flags.DEFINE_bool("overwrite", False, "Write into --out even when it is not empty (its files of the "
                                  "same names are replaced, others kept).")
    source = flags.DEFINE_string("from", None, "Instead of --workdir: one of the paper's released checkpoints (a Hub "
                                 "id such as theodor1289/bestckpt_half_sized_text1_vision1, or its local snapshot), "
                                 "converted to an export at --out.")

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if bool(workdir.value) == bool(source.value) or not out_dir.value:
            raise app.UsageError("--out and one of --workdir or --from are required")
        if step_flag.value not in ("latest", "best") and not step_flag.value.isdigit():
            raise app.UsageError(f"--step: {step_flag.value!r} is not latest, best or a step number")
        logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it opens at INFO
        if source.value:
            converted = convert_released(source.value, out_dir.value, overwrite.value)
            print(f"converted {source.value} to {converted}: score it with python -m flava_jax.evaluate "
                  f"--model={converted}, or train from it with --config.init_from={converted}")
            return
        try:
            out, step = export(workdir.value, out_dir.value, step_flag.value, overwrite.value)
        except ExportError as e:
            sys.exit(f"error: {e}")  # one line; a usage error would print the whole flag help above it
        print(f"exported step {step} of {workdir.value} to {out}")

    app.run(run)


if __name__ == "__main__":
    main()
