"""The package's floors: each subpackage imports only from the floors below it, so data flows one way and the
PyTorch evaluator never loads JAX; and no function in flava_jax/ runs past 80 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flava_jax"
# What each floor may import from flava_jax (besides itself); the commands at the top level may import any floor.
MAY_IMPORT = {
    "common": set(),
    "model": {"common"},
    "data": {"common", "model"},
    "train": {"common", "model", "data"},
    "eval": {"common", "data"},
}


def _imports(path: Path) -> set[str]:
    """The flava_jax modules `path` imports, as dotted names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flava_jax"):
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "flava_jax")
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("flava_jax"))
    return out


@pytest.mark.parametrize("floor", sorted(MAY_IMPORT))
def test_each_floor_imports_only_from_the_floors_below(floor: str) -> None:
    allowed = MAY_IMPORT[floor] | {floor}
    wrong = {f"{path.relative_to(PACKAGE)}: {module}"
             for path in (PACKAGE / floor).rglob("*.py") for module in _imports(path)
             if module.split(".")[1] not in allowed}
    assert not wrong, sorted(wrong)


def test_the_floors_rule_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from flava_jax.train.trainer import train\nfrom flava_jax import FlavaConfig\n")
    assert _imports(module) == {"flava_jax.train.trainer", "flava_jax", "flava_jax.FlavaConfig"}


def test_the_pytorch_evaluator_and_the_shared_floor_load_no_jax() -> None:
    code = ("import sys, flava_jax.eval.cli, flava_jax.eval.torch_pll, flava_jax.common.pll, flava_jax.common.blimp; "
            "print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
