"""Issue 29, item 2, against a real ``slimserve serve``: a home that cannot take a variant (under
``SLIMSERVE_MIN_FREE_BYTES`` free) starts with start-up compression on, reaches ready, serves
the original, and says why in one log line and ``slimserve_store_refusals_total``.

Two ways to such a home: the default settings on a real 64 MB tmpfs (root only: skipped
elsewhere), and ``SLIMSERVE_MIN_FREE_BYTES`` set above the free space of the temp directory,
which takes the same path without mounting anything.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from service.launch import SlimServer, metric_value, share_builtin_cache

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DIGIT = {
    "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]
}


@pytest.fixture(params=["min-free-bytes", "tmpfs-64m"])
def small_home(request, tmp_path):
    """(home, extra environment) of a home too small for a variant."""
    if request.param == "min-free-bytes":
        free = shutil.disk_usage(tmp_path).free
        yield tmp_path / "home", {"SLIMSERVE_MIN_FREE_BYTES": str(free + (1 << 30))}
        return
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt / "home", {}  # the default SLIMSERVE_MIN_FREE_BYTES, 256 MB, exceeds it
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_home_too_small_for_a_variant_reaches_ready_and_serves(small_home, tmp_path):
    home, extra = small_home
    home.mkdir(parents=True)
    share_builtin_cache(home)  # the session's trained digits models: a link, no retraining
    env = {"SLIMSERVE_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"),
           "SLIMSERVE_AUTO_COMPRESS": "true", **extra}  # fmt: skip
    began = time.monotonic()
    # The launcher's own files (its log) stay off the small disk.
    with SlimServer(tmp_path / "launcher", "digits-cnn", **env).start(timeout=240) as srv:
        ready_s = time.monotonic() - began
        with httpx.Client(timeout=60) as c:
            for _ in range(20):
                r = c.post(f"{srv.url}/v2/models/digits-cnn/infer", json=DIGIT)
                assert r.status_code == 200, r.text
                assert r.headers["x-slimserve-variant"] == "original"
            text = c.get(f"{srv.url}/metrics").text
        refused = metric_value(
            text, "slimserve_store_refusals_total", model="digits-cnn", reason="store_full"
        )
        assert refused == 1, (refused, srv.tail())
        assert srv.admin("GET", "/jobs", check=True).json()["jobs"] == []
        lines = [line for line in srv.tail(200_000).splitlines() if "[store_full]" in line]
        assert len(lines) == 1 and "SLIMSERVE_MIN_FREE_BYTES" in lines[0], lines
        assert srv.proc.poll() is None
    print(f"ready after {ready_s:.1f} s")
