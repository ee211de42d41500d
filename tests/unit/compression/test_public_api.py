import pytest

import compression

pytestmark = pytest.mark.unit


def test_public_names_are_pinned():
    assert sorted(compression.__all__) == sorted(
        ["compress", "load_variant", "PROFILES", "DeviceProfile", "CompressedModel"]
    )
    for name in compression.__all__:
        assert hasattr(compression, name)


def test_engine_never_imports_the_web_stack():
    import pathlib
    import re

    root = pathlib.Path(compression.__file__).parent
    pattern = re.compile(
        r"^\s*(import|from)\s+(bentoml|fastapi|starlette|prometheus_client)\b", re.M
    )
    offenders = [p.name for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_only_graph_module_imports_torch_pruning():
    import pathlib

    root = pathlib.Path(compression.__file__).parent
    users = sorted(p.name for p in root.rglob("*.py") if "import torch_pruning" in p.read_text())
    assert users == ["graph.py"]
