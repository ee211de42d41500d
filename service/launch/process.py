"""A server subprocess in its own session: start, wait until it answers, stop, read its log;
free ports; a fresh home that reuses this process's trained digits models."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import httpx

from service.home import builtin_cache

ROOT = Path(__file__).resolve().parents[2]  # the source checkout (deploy/, .venv-triton)


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


def share_builtin_cache(home: str | Path) -> None:
    """Let a fresh SLIMSERVE_HOME reuse the trained digits models (same cache key, no retrain):
    ``home/builtin`` becomes a link to this process's cache (``$SLIMSERVE_HOME/builtin``)."""
    shared = builtin_cache()
    shared.mkdir(parents=True, exist_ok=True)
    link = Path(home) / "builtin"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(shared, target_is_directory=True)


class Process:
    """A server subprocess in its own session; subclasses say how to start and probe it."""

    name = "server"
    # SIGTERM to the whole group (bentoml's workers) or to the launched process only (it stops
    # its own children in order, as PyTriton does); SIGKILL always goes to the group.
    term_group = True
    term_wait_s = 60.0  # how long a SIGTERM may take before the group is killed

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None
        self.address = ""  # host:port of its HTTP endpoint, once started

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _spawn(self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None) -> None:
        self.log_path = Path(log)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        """Poll :meth:`ready` until it holds; raise (and stop) if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.tail()}")
            try:
                if self.ready():
                    return
            except (httpx.HTTPError, OSError):  # not listening yet
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM, wait up to ``term_wait_s``, then SIGKILL the process group; safe to call
        twice."""
        if self.proc is not None and self.proc.poll() is None:
            if self.term_group:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group this process leads
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.term_wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of its log."""
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-n:] if self.log_path else ""
        except OSError:
            return ""

    def client(self, **kw: Any):
        """A ``tritonclient.http`` client of its Open Inference Protocol endpoint."""
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.address, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
