"""``slimserve serve`` and ``slimserve worker`` processes: a replica with its admin API, a
fleet's compression worker, and a fleet's replicas started together."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from service.launch.process import Process, free_ports, share_builtin_cache

ADMIN_TOKEN = "slimserve-launch-token"  # the admin token a launched SlimServe gets by default


class AdminError(RuntimeError):
    """An admin call answered 4xx/5xx; ``response`` is the answer (``status_code``, ``text``)."""

    def __init__(self, method: str, path: str, response: httpx.Response) -> None:
        super().__init__(f"{method} /admin{path}: {response.status_code} {response.text}")
        self.response = response
        self.status_code = response.status_code


class SlimServer(Process):
    """``slimserve serve`` with its own home, no background compression and an admin token.

    ``env`` (``SLIMSERVE_*=...``) overrides those defaults; the digits models trained by this
    process are shared with the server through ``home/builtin``.
    """

    name = "slimserve"

    def __init__(self, home: str | Path, models: str = "digits-cnn,minilm", **env: str) -> None:
        super().__init__()
        self.home = Path(home)
        self.models, self.extra_env = models, env
        self.token = env.get("SLIMSERVE_ADMIN_TOKEN", ADMIN_TOKEN)
        self.port: int | None = None
        self.grpc_port: int | None = None

    def start(self, timeout: float = 600, attempts: int = 3) -> SlimServer:
        """Start on a free port and return once ``/readyz`` answers 200. A port taken between
        choosing and binding it (another server starting beside it) is a new try on new
        ports."""
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError as err:
                # uvicorn's "Could not bind" for the HTTP port; zmq's "Address already in
                # use" for the ports BentoML's process manager picks for itself.
                taken = any(t in str(err) for t in ("Could not bind", "Address already in use"))
                if not taken or attempt == attempts - 1:
                    raise
                self.stop()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> SlimServer:
        self.home.mkdir(parents=True, exist_ok=True)
        share_builtin_cache(self.home)
        self.port, self.grpc_port = free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        env = dict(os.environ)
        env.update(
            SLIMSERVE_HOME=str(self.home),
            BENTOML_HOME=str(self.home / "bentoml"),
            SLIMSERVE_ADMIN_TOKEN=ADMIN_TOKEN,
            SLIMSERVE_AUTO_COMPRESS="false",
            SLIMSERVE_MODELS=self.models,
            SLIMSERVE_GRPC_PORT=str(self.grpc_port),  # never the shared default 8001
        )
        env.update(self.extra_env)  # may override the defaults above
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)]
        self._spawn([*cmd, "--host", "127.0.0.1"], env, self.home / f"server-{self.port}.log", None)
        self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

    def admin(
        self, method: str, path: str, *, check: bool = False, timeout: float = 120, **kw: Any
    ) -> httpx.Response:
        """Call ``/admin{path}`` with the token; the response whatever its status, or with
        ``check=True`` raise :class:`AdminError` on 4xx/5xx (``kw`` go to ``httpx.request``)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        r = httpx.request(method, f"{self.url}/admin{path}", headers=headers, timeout=timeout, **kw)
        if check and r.status_code >= 400:
            raise AdminError(method, path, r)
        return r

    def compress(self, model: str, profile: str = "cpu", timeout: float = 900) -> dict:
        """Run a compression job through the admin API; the finished job (with its variant)."""
        job_id = self.admin(
            "POST", f"/models/{model}/compress", json={"profile": profile}, check=True
        ).json()["job"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.admin("GET", f"/jobs/{job_id}", check=True).json()
            if job["state"] not in ("queued", "running"):
                if not job.get("variant"):
                    raise RuntimeError(f"compression job {job_id} produced no variant: {job}")
                return job
            time.sleep(1.0)
        raise TimeoutError(f"compression job {job_id} still running after {timeout:.0f} s")

    def activate(self, model: str, variant: str) -> None:
        """Serve ``variant`` (an id or ``original``) for ``model``; raises on refusal."""
        self.admin("POST", f"/models/{model}/activate", json={"variant": variant}, check=True)

    def variant_dir(self, model: str, variant: str) -> Path:
        """Where the model store keeps a variant (BentoML: models/<name>/<version>/)."""
        path = self.home / "bentoml" / "models" / model.lower().replace("/", "-") / variant
        if not (path / "plan.json").is_file():
            raise FileNotFoundError(f"no variant files at {path}")
        return path


class FleetWorker(Process):
    """``slimserve worker``: compresses for a fleet sharing ``SLIMSERVE_VARIANT_CACHE``; no
    HTTP, so it is "ready" once started. ``env`` as for :class:`SlimServer`."""

    name = "slimserve-worker"

    def __init__(self, home: str | Path, models: str, **env: str) -> None:
        super().__init__()
        self.home = Path(home)
        self.models, self.extra_env = models, env

    def start(self, once: bool = False) -> FleetWorker:
        """Start it with ``/metrics`` on a free port (``self.address``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        share_builtin_cache(self.home)
        env = dict(os.environ)
        env.update(SLIMSERVE_HOME=str(self.home), BENTOML_HOME=str(self.home / "bentoml"))
        env.update(SLIMSERVE_MODELS=self.models, **self.extra_env)
        (port,) = free_ports(1)
        self.address = f"127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "service.cli", "worker", "--metrics-port", str(port)]
        cmd += ["--once"] if once else []
        self._spawn(cmd, env, self.home / "worker.log", None)
        return self

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Return once its log holds ``text``; raise if it exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while text not in self.tail(1 << 20):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        """Its exit status (``--once``)."""
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL it and its job processes (a node lost, an OOM kill)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def start_all(servers: list[SlimServer], timeout: float = 600) -> None:
    """Start ``servers`` at once (a fleet's replicas coming up together) and return when every
    one is ready; if any fails, stop them all and raise its error."""
    errors: list[BaseException] = []

    def start(server: SlimServer) -> None:
        try:
            server.start(timeout)
        except BaseException as err:  # raised below, once every server is stopped
            errors.append(err)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for server in servers:
            server.stop()
        raise errors[0]
