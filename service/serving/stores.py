"""Where a fleet shares what it compressed: a directory every replica mounts, or object storage.

A store holds small named objects (``a/b/c`` names) and offers the five operations the variant
cache and the lease need, each atomic for a reader:

- ``read(name)``: the bytes, or None when there is no such object;
- ``write(name, data)``: create or replace, a reader sees the old bytes or the new, never half;
- ``create(name, data)``: create only where no object of that name exists, True if this call
  created it. Two replicas racing on one name: exactly one gets True. This is the lease's
  primitive (``service.serving.lease``);
- ``names(prefix)``: every name under ``prefix/``;
- ``delete(name)``.

``open_store("s3://bucket/prefix")`` is object storage through boto3, with boto3's usual
credential sources (environment, shared files, IAM roles, web identity) and endpoint
(``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server). Its ``create`` is
a conditional write (``If-None-Match: *``), which S3 has honoured since 2024 and MinIO, Ceph
RGW, R2, GCS and SeaweedFS honour too; a store that ignores the header cannot hold a lease.
Anything else is a directory: ``create`` links a fully written temporary file to its name
(``link(2)`` fails where the name exists, on local disks and on NFS), ``write`` renames one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Protocol

S3_SCHEME = "s3://"


class Store(Protocol):
    url: str

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...

    def create(self, name: str, data: bytes) -> bool: ...

    def names(self, prefix: str) -> list[str]: ...

    def delete(self, name: str) -> None: ...


def open_store(spec: str | Path) -> Store:
    """The store at ``spec``: ``s3://bucket[/prefix]`` or a directory (created if missing)."""
    text = str(spec)
    if text.startswith(S3_SCHEME):
        bucket, _, prefix = text[len(S3_SCHEME) :].partition("/")
        if not bucket:
            raise ValueError(f"expected s3://bucket[/prefix], got {text!r}")
        return S3Store(bucket, prefix.strip("/"))
    return DirStore(Path(text))


def _check_name(name: str) -> str:
    """Names are relative paths of plain parts: nothing may climb out of the store."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"not a store object name: {name!r}")
    return name


class DirStore:
    """A directory (local, or a shared volume: NFS, a ReadWriteMany claim)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def _staged(self, path: Path, data: bytes) -> Path:
        """``data`` written and flushed under a hidden temporary name beside ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        os.replace(self._staged(path, data), path)

    def create(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        tmp = self._staged(path, data)
        try:
            os.link(tmp, path)  # fails with EEXIST where the name exists: atomic on NFS too
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def names(self, prefix: str) -> list[str]:
        base = self.root / _check_name(prefix.strip("/"))
        if not base.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            out += [(rel / f).as_posix() for f in filenames if not f.startswith(".")]
        return sorted(out)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


class S3Store:
    """A bucket and a prefix on S3 or an S3-compatible server."""

    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:
        if client is None:
            import boto3  # only a fleet on object storage needs it (the `s3` extra)
            from botocore.config import Config

            client = boto3.client("s3", config=Config(retries={"mode": "standard"}))
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"{S3_SCHEME}{bucket}/{self.prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        name = _check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _code(self, err) -> str:
        return str(err.response.get("Error", {}).get("Code", ""))

    def read(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def create(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*"
            )
            return True
        except ClientError as err:
            # 412: the object exists; 409: another conditional write to it is under way.
            if self._code(err) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def names(self, prefix: str) -> list[str]:
        start = self._key(prefix.strip("/")) + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        out = []
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=start):
            out += [item["Key"][cut:] for item in page.get("Contents", [])]
        return sorted(out)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))
