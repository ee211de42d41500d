"""Start and stop the servers the serving benchmarks measure: ``slimserve serve`` and a real
Triton Inference Server (PyTriton, ``deploy/triton/serve_variant.py`` in ``.venv-triton``).

Each runs in its own process group with its log in a file, on free ports, and is stopped with
SIGTERM (SIGKILL to that group only if it does not exit).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.common import ROOT

ADMIN_TOKEN = "bench-admin-token"
TRITON_PYTHON = Path(os.environ.get("TRITON_VENV", ROOT / ".venv-triton")) / "bin" / "python"
TRITON_SERVE = ROOT / "deploy" / "triton" / "serve_variant.py"


def free_ports(n: int = 1) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def share_builtin_cache(home: Path) -> None:
    """Let a fresh SLIMSERVE_HOME reuse the trained digits models (same cache key, no retrain)."""
    from service.models.digits import cache_dir

    shared = cache_dir()
    shared.mkdir(parents=True, exist_ok=True)
    link = Path(home) / "builtin"
    if not link.exists():
        link.symlink_to(shared, target_is_directory=True)


class Process:
    """A server subprocess in its own session; subclasses say how to start and probe it."""

    name = "server"

    def __init__(self, log: Path) -> None:
        self.log_path = Path(log)
        self.proc: subprocess.Popen | None = None
        self._log = None

    def _spawn(self, cmd: list[str], env: dict[str, str]) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                if self.ready():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this process leads
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class SlimServer(Process):
    """``slimserve serve`` with its own home, no background compression, an admin token."""

    name = "slimserve"

    def __init__(self, home: Path, models: str = "digits-cnn,minilm", **env: str) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_ports()[0]
        super().__init__(self.home / f"server-{self.port}.log")
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.models, self.extra_env = models, env

    def start(self, timeout: float = 600) -> SlimServer:
        share_builtin_cache(self.home)
        env = dict(os.environ)
        env.update(
            SLIMSERVE_HOME=str(self.home),
            BENTOML_HOME=str(self.home / "bentoml"),
            SLIMSERVE_ADMIN_TOKEN=ADMIN_TOKEN,
            SLIMSERVE_AUTO_COMPRESS="false",
            SLIMSERVE_MODELS=self.models,
        )
        env.update(self.extra_env)  # may override the defaults above
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)]
        self._spawn([*cmd, "--host", "127.0.0.1"], env)
        self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

    def admin(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.request(method, f"{self.url}/admin{path}", headers=headers, timeout=120, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} /admin{path}: {r.status_code} {r.text}")
        return r

    def compress(self, model: str, profile: str = "cpu", timeout: float = 900) -> dict:
        """Run a compression job through the admin API; the finished job (with its variant)."""
        job_id = self.admin("POST", f"/models/{model}/compress", json={"profile": profile})
        job_id = job_id.json()["job"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.admin("GET", f"/jobs/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                if not job.get("variant"):
                    raise RuntimeError(f"compression job {job_id} produced no variant: {job}")
                return job
            time.sleep(1.0)
        raise TimeoutError(f"compression job {job_id} still running after {timeout:.0f} s")

    def activate(self, model: str, variant: str) -> None:
        self.admin("POST", f"/models/{model}/activate", json={"variant": variant})

    def variant_dir(self, model: str, variant: str) -> Path:
        """Where the model store keeps a variant (BentoML: models/<name>/<version>/)."""
        path = self.home / "bentoml" / "models" / model.lower().replace("/", "-") / variant
        if not (path / "plan.json").is_file():
            raise FileNotFoundError(f"no variant files at {path}")
        return path


class TritonServer(Process):
    """A real Triton Inference Server serving one SlimServe variant (PyTriton, CPU)."""

    name = "triton"

    def __init__(
        self, variant_dir: Path, model_name: str, log: Path, threads: int, max_batch_size: int
    ) -> None:
        super().__init__(log)
        self.http, self.grpc, self.metrics = free_ports(3)
        self.address = f"127.0.0.1:{self.http}"
        self.variant_dir, self.model_name = Path(variant_dir), model_name
        self.threads, self.max_batch_size = threads, max_batch_size

    @staticmethod
    def unavailable() -> str | None:
        """Why Triton cannot run here, or None."""
        if not TRITON_SERVE.is_file():
            return f"{TRITON_SERVE.relative_to(ROOT)} is missing"
        if not TRITON_PYTHON.is_file():
            return (
                f"no {TRITON_PYTHON.parent.parent.name}: run `bash deploy/triton/install-venv.sh` "
                "(nvidia-pytriton pins numpy<2, so Triton has its own venv)"
            )
        return None

    def start(self, timeout: float = 600) -> TritonServer:
        cmd = [
            str(TRITON_PYTHON), str(TRITON_SERVE), "--variant", str(self.variant_dir),
            "--name", self.model_name, "--max-batch-size", str(self.max_batch_size),
            "--http-port", str(self.http), "--grpc-port", str(self.grpc),
            "--metrics-port", str(self.metrics), "--threads", str(self.threads),
        ]  # fmt: skip
        self._spawn(cmd, dict(os.environ))
        self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        url = f"http://{self.address}/v2/models/{self.model_name}/ready"
        return httpx.get(url, timeout=2).status_code == 200
