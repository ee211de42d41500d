"""Every code block in the README runs as written.

Python blocks run in a fresh interpreter; shell blocks run line by line with ``bash`` in one
scratch directory, in README order (a later line may use what an earlier one wrote), against
the session's real server where they talk to ``localhost:3000``. The two set-up commands are
checked with ``make -n`` (``make test`` is this very suite). Lines that need what no test
machine has (a Docker engine, a Kubernetes cluster) are named below with the reason; a shell
line that is neither run nor named fails the test, so a new block cannot go unchecked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# Lines that cannot run on a machine without a Docker engine or a cluster, and where their
# ingredients are checked instead.
ELSEWHERE = {
    "docker ": "needs a Docker engine; the Dockerfile is linted (tests/unit/deploy)",
    "bentoml build": "packages a Bento for a registry; the bentofile is checked in tests/unit/deploy",
    "kubectl create secret": "needs a cluster; overlays render and validate in tests/unit/deploy",
    "kubectl apply": "needs a cluster; overlays render and validate in tests/unit/deploy",
}
SETUP = {"make serve", "make test"}


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def commands(code: str) -> list[str]:
    """A shell block's commands: continuation lines joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [c.strip() for c in joined.splitlines() if c.strip() and not c.startswith("#")]


def test_the_readme_has_code_and_every_block_has_a_language():
    found = blocks(README.read_text())
    assert len(found) >= 5
    assert all(lang in ("python", "bash") for lang, _ in found), [lang for lang, _ in found]


def test_every_code_block_runs_as_written(server, tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    ran = []
    for lang, code in blocks(README.read_text()):
        if lang == "python":
            done = subprocess.run(
                [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                text=True, timeout=600,
            )  # fmt: skip
            assert done.returncode == 0, code + "\n" + done.stdout[-2000:] + done.stderr[-3000:]
            ran.append(code.splitlines()[0])
            continue
        for command in commands(code):
            word = command.split("#")[0].strip()
            if word in SETUP:  # make's own dry run: the target exists and parses
                target = word.split()[1]
                done = subprocess.run(
                    ["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True
                )
                assert done.returncode == 0, done.stderr
                continue
            if any(command.startswith(prefix) for prefix in ELSEWHERE):
                continue
            line = command.replace("localhost:3000", server.address)
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", line], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            assert done.stdout.strip() or "--out" in command, f"{command} printed nothing"
            ran.append(command)
    assert any(c.startswith("curl") for c in ran) and any("compress" in c for c in ran), ran
