"""Start a real ``slimserve serve`` on a free port for tests, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "test-admin-token"


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct ports free right now (all bound at once, then released)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Server:
    """A ``slimserve serve`` process with its own home directory."""

    def __init__(self, home: Path, models: str = "digits-cnn,minilm", **env: str) -> None:
        self.home, self.models, self.extra_env = home, models, env
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 300) -> Server:
        (port,) = free_ports()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        env.update(
            SLIMSERVE_HOME=str(self.home),
            BENTOML_HOME=str(self.home / "bentoml"),
            SLIMSERVE_ADMIN_TOKEN=TOKEN,
            SLIMSERVE_AUTO_COMPRESS="false",
            SLIMSERVE_MODELS=self.models,
            **self.extra_env,
        )
        self.log = open(self.home / f"server-{port}.log", "w")  # noqa: SIM115
        cmd = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout} s: {self.tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    def tail(self, n: int = 4000) -> str:
        self.log.flush()
        return (self.home / Path(self.log.name).name).read_text()[-n:]

    def admin(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.request(method, f"{self.url}/admin{path}", headers=headers, timeout=60, **kw)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
