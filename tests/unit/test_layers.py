"""The layers are pinned by import-linter (``[tool.importlinter]`` in pyproject.toml).

The contract passes on the tree as it is, and breaks when the engine reaches up: a copy of the
packages with one forbidden import added must fail ``lint-imports``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
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
        ("compression/evaluation/measure.py", "import httpx"),
        ("compression/evaluation/measure.py", "import uvicorn"),
        ("compression/evaluation/measure.py", "import starlette.requests"),
        ("compression/evaluation/measure.py", "import bentoml"),
        ("compression/evaluation/measure.py", "import tritonclient.http"),
        ("compression/evaluation/measure.py", "from service.models import resolve"),
        ("compression/evaluation/metrics.py", "import torch_pruning"),
        # The engine's own layers: nothing reaches back up.
        ("compression/task.py", "from compression.api import compress"),
        ("compression/structure/graph.py", "from compression.search import context"),
        ("compression/forms/precision.py", "from compression.output import variant"),
        ("compression/core/inputs.py", "from compression.evaluation import metrics"),
        ("compression/search/verify.py", "from compression.pipeline import prepare"),
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


def _cycles(package: str) -> list[list[str]]:
    """The import cycles among ``package``'s modules (strongly connected components of more
    than one module), imports inside functions and under TYPE_CHECKING included."""
    graph = grimp.build_graph(package)
    edges = {
        m: {d for d in graph.find_modules_directly_imported_by(m) if d.startswith(package)}
        for m in graph.modules
        if m.startswith(package)
    }
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in order:
            visit(module)
    return found


@pytest.mark.parametrize("package", ["compression", "service"])
def test_no_import_cycle(package):
    assert _cycles(package) == []


def test_the_cycle_check_finds_a_cycle(tree, tmp_path, monkeypatch):
    copy = tmp_path / "cyclic"
    shutil.copytree(tree, copy)
    target = copy / "compression/core/inputs.py"
    target.write_text(target.read_text() + "\nfrom compression.search import context  # noqa\n")
    monkeypatch.syspath_prepend(str(copy))
    for name in [m for m in sys.modules if m == "compression" or m.startswith("compression.")]:
        monkeypatch.delitem(sys.modules, name)
    cycles = _cycles("compression")
    assert any("compression.core.inputs" in c for c in cycles), cycles


@pytest.mark.parametrize("package", ["compression", "service"])
def test_project_imports_inside_functions_say_why(package):
    """An import of the project's own modules (``compression`` or ``service``) inside a
    function hides a dependency from the reader (and once hid a 12-module cycle): each one
    carries a comment with its reason, on its line or above it (above a run of imports, the
    comment over the first covers the run)."""
    bare = []
    for path in sorted((ROOT / package).rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        import_lines = {
            n
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for n in range(node.lineno, node.end_lineno + 1)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                module = inner.module if isinstance(inner, ast.ImportFrom) else None
                names = [a.name for a in inner.names] if isinstance(inner, ast.Import) else []
                if not any(
                    (n or "").split(".")[0] in ("compression", "service") for n in [module, *names]
                ):
                    continue
                own = lines[inner.lineno - 1 : inner.end_lineno]
                above = inner.lineno - 1
                while above in import_lines:  # up past the run of imports this one ends
                    above -= 1
                if not any("#" in line for line in own) and not (
                    above and lines[above - 1].strip().startswith("#")
                ):
                    bare.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {own[0].strip()}")
    assert bare == [], "\n".join(bare)
