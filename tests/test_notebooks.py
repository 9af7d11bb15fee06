"""The notebooks run top to bottom on CPU, papermill-style: a cell injected after the one tagged `parameters` sets
small values (a short training, a few BLiMP pairs, paths under the test's tmp_path). They are committed clean."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from tests.configs import REPO
from tests.conftest import CPU_HEAVY, SHARED_DATA, xla_flags

NOTEBOOKS = REPO / "notebooks"
QUICKSTART_STEPS = 4


def _execute(name: str, parameters: dict[str, Any], tmp_path: Path) -> nbformat.NotebookNode:
    """Run notebooks/NAME with `parameters` injected after its parameter cell, in a kernel on this interpreter
    (a kernelspec written for sys.executable, so no other Jupyter install can be picked up), from notebooks/."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (index,) = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "flava_jax_test")
    manager = AsyncKernelManager(kernel_name="flava_jax_test",
                                 kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    # A user's run sees one CPU device, not the 8 that conftest fakes for the sharding tests.
    env = {**os.environ, "XLA_FLAGS": xla_flags()}
    NotebookClient(nb, km=manager, timeout=1200, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute(env=env)
    return nb


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in nb.cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("name", ["colab_tpu_quickstart.ipynb", "results.ipynb"])
def test_notebook_is_committed_clean(name: str) -> None:
    """No outputs or execution counts in the repository: small diffs, nothing stale."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in nb.cells) == 1


@pytest.mark.slow
@pytest.mark.xdist_group(CPU_HEAVY)
def test_quickstart_trains_exports_and_scores_blimp(tmp_path: Path) -> None:
    """The quickstart's commands, with a 4-step training: metrics, an export, BLiMP results and both plots. BLiMP
    is ../shared/data/blimp where it exists (CI), else the notebook's demo pairs (a fresh clone)."""
    work = tmp_path / "work"
    nb = _execute("colab_tpu_quickstart.ipynb", {
        "WORKDIR": str(work), "BLIMP_LIMIT": 1,
        "TRAIN_FLAGS": [f"--config.total_steps={QUICKSTART_STEPS}", f"--config.checkpoint_every_steps="
                        f"{QUICKSTART_STEPS}", f"--config.eval.every_steps={QUICKSTART_STEPS}"]}, tmp_path)
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, QUICKSTART_STEPS + 1))
    assert [r["step"] for r in rows if "pppl" in r] == [QUICKSTART_STEPS]
    assert json.loads((work / "export" / "config.json").read_text())["model_type"] == "flava"
    blimp = json.loads((work / "results" / "results.json").read_text())["blimp"]
    paradigms = len(list((SHARED_DATA / "blimp").glob("*.jsonl"))) if (SHARED_DATA / "blimp").is_dir() else 4
    assert blimp["pairs"] == paradigms and len(blimp["paradigms"]) == paradigms
    assert 0 <= blimp["accuracy"] <= 1
    assert _images(nb) == 2  # the loss curves and the phenomena


def test_results_notebook_demo_grid_is_the_papers(tmp_path: Path) -> None:
    """Without RESULTS: the paper's full-size table as a demo grid, so both heatmaps show the paper's deltas."""
    from flava_jax.eval.paper_results import FULL

    nb = _execute("results.ipynb", {"OUT": str(tmp_path / "out")}, tmp_path)
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["paper_size"] == "full" and set(summary["cells"]) == set(FULL)
    for cell, deltas in summary["deltas"]["paper"].items():
        assert deltas == pytest.approx(summary["deltas"]["ours"][cell], abs=1e-9)
    assert (tmp_path / "out" / "blimp_deltas.png").stat().st_size and _images(nb) == 1
    assert "DEMO" in "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))


def test_results_notebook_on_given_runs(tmp_path: Path) -> None:
    """RESULTS and LABELS as a user gives them: a text-only run and one with images, 5 points better everywhere."""
    from flava_jax.common.blimp import PHENOMENA

    runs = {"10M/0": 0.60, "10M/40K": 0.65}
    labels = {}
    for cell, accuracy in runs.items():
        path = tmp_path / cell.replace("/", "_") / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"model": "", "blimp": {"accuracy": accuracy,
                                                           "phenomena": dict.fromkeys(PHENOMENA, accuracy)}}))
        labels[str(path.parent)] = cell
    nb = _execute("results.ipynb", {"RESULTS": list(labels), "LABELS": labels, "OUT": str(tmp_path / "out")},
                  tmp_path)
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [run["cell"] for run in summary["runs"]] == list(runs)
    assert summary["deltas"]["ours"]["10M/40K"] == pytest.approx(dict.fromkeys(["average", *PHENOMENA], 5.0))
    assert _images(nb) == 1
