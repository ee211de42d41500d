"""A real Triton Inference Server (PyTriton on the CPU, ``.venv-triton``'s python) serving a
model repository or one SlimServe variant."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from service.launch.process import ROOT, Process, free_ports

TRITON_PYTHON = Path(os.environ.get("TRITON_VENV", ROOT / ".venv-triton")) / "bin" / "python"
TRITON_SERVE = ROOT / "deploy" / "triton" / "serve_variant.py"
TRITON_READY = "SLIMSERVE-TRITON READY"  # the line serve_variant.py prints once all are bound


class TritonServer(Process):
    """A real Triton Inference Server (PyTriton, CPU) serving a model repository written by
    ``slimserve export`` (``repo=``) or one SlimServe variant exported on the fly
    (``variant=``, named ``name``)."""

    name = "triton"
    term_group = False  # serve_variant.py stops tritonserver itself on SIGTERM

    def __init__(
        self,
        log: str | Path,
        *,
        repo: str | Path | None = None,
        variant: str | Path | None = None,
        name: str | None = None,
        max_batch_size: int = 64,
        threads: int = 1,
    ) -> None:
        super().__init__()
        if (repo is None) == (variant is None):
            raise ValueError("give exactly one of repo= (a model repository) or variant=")
        self.log = Path(log)
        self.repo, self.variant, self.model_name = repo, variant, name
        self.max_batch_size, self.threads = max_batch_size, threads
        self.http = self.grpc = self.metrics = 0
        self.models: list[str] = []  # what it serves, from its ready line

    @staticmethod
    def unavailable() -> str | None:
        """Why a Triton cannot run here (no launcher, no .venv-triton, broken imports), or None."""
        if not TRITON_SERVE.is_file():
            return f"{TRITON_SERVE} is missing (Triton runs from a source checkout)"
        if not TRITON_PYTHON.is_file():
            return (
                f"no {TRITON_PYTHON.parent.parent.name}: run `bash deploy/triton/install-venv.sh` "
                "(nvidia-pytriton pins numpy<2, so Triton has its own venv)"
            )
        probe = subprocess.run(
            [str(TRITON_PYTHON), "-c", "import pytriton.triton, torch, tritonclient.grpc"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode != 0:
            return f"{TRITON_PYTHON} cannot import pytriton/torch: {probe.stderr.strip()[-300:]}"
        return None

    def start(self, timeout: float = 600) -> TritonServer:
        """Start on free ports and return once every model it serves is ready."""
        self.http, self.grpc, self.metrics = free_ports(3)
        self.address = f"127.0.0.1:{self.http}"
        if self.repo is not None:
            what = ["--repo", str(self.repo)]
        else:
            what = ["--variant", str(self.variant), "--max-batch-size", str(self.max_batch_size)]
            what += ["--name", self.model_name] if self.model_name else []
        cmd = [
            str(TRITON_PYTHON), str(TRITON_SERVE), *what,
            "--http-port", str(self.http), "--grpc-port", str(self.grpc),
            "--metrics-port", str(self.metrics), "--threads", str(self.threads),
        ]  # fmt: skip
        self._spawn(cmd, dict(os.environ), self.log, ROOT)
        self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        line = next((x for x in self.tail(1 << 20).splitlines() if x.startswith(TRITON_READY)), "")
        if not line:
            return False
        self.models = line.rpartition("models=")[2].split(",")
        if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code != 200:
            return False
        return all(
            httpx.get(f"{self.url}/v2/models/{m}/ready", timeout=2).status_code == 200
            for m in self.models
        )
