"""The Prometheus multiprocess directory is never under the home (issue 15, item 4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from service.serving.bentoml_main import metrics_dir

pytestmark = pytest.mark.unit


def test_a_configured_metrics_directory_is_used_and_kept(tmp_path):
    path, temporary = metrics_dir(str(tmp_path / "metrics"))
    assert path == tmp_path / "metrics" and path.is_dir() and not temporary


def test_the_default_is_a_fresh_directory_off_the_home_and_stale_ones_go(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    path, temporary = metrics_dir("")
    try:
        stale = path.parent / f"slimserve-metrics-{dead}-x"
        stale.mkdir()
        assert temporary and path.name.startswith(f"slimserve-metrics-{os.getpid()}-")
        home = os.environ.get("SLIMSERVE_HOME", "")
        assert home and not str(path).startswith(home)
        again, _ = metrics_dir("")  # the next server removes what a killed one left
        shutil.rmtree(again)
        assert not stale.exists() and path.exists()  # a live server's directory stays
    finally:
        shutil.rmtree(path, ignore_errors=True)
