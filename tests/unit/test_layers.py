"""The layers are pinned by import-linter (``[tool.importlinter]`` in pyproject.toml).

The contract passes on the tree as it is, and breaks when the engine reaches up: a copy of the
packages with one forbidden import added must fail ``lint-imports``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(LINT.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for package in ("compression", "service"):
        shutil.copytree(
            ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_its_layers(tree):
    done = _lint(tree)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("compression/measure.py", "import httpx"),
        ("compression/measure.py", "import uvicorn"),
        ("compression/measure.py", "import starlette.requests"),
        ("compression/measure.py", "import bentoml"),
        ("compression/measure.py", "import tritonclient.http"),
        ("compression/measure.py", "from service.models import resolve"),
        ("compression/metrics.py", "import torch_pruning"),
        ("service/models/sources.py", "from service.serving import metrics"),
        ("service/serving/runtime.py", "from service.cli import main"),
    ],
)
def test_an_import_that_crosses_a_layer_breaks_the_contract(tree, tmp_path, module, line):
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    done = _lint(copy)
    assert done.returncode != 0, f"{line!r} in {module} was not caught:\n{done.stdout[-2000:]}"
    assert "BROKEN" in done.stdout
