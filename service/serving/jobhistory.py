"""Job records on disk, so a job's record outlives the worker that ran it.

The job table lives in a worker's memory; a worker killed (OOM, SIGKILL, a crash) took its jobs'
records with it, and ``GET /admin/jobs`` after the restart knew nothing of a job it had
answered 202 for. Each record is written as ``<home>/jobs/history/<id>.json`` when the job is
queued, when it starts and when it ends. A new worker reads them back: a job that was queued or
running in a worker that is gone ended with it (its job process dies with the worker), so it is
kept as ``failed``, saying so. Records of a live worker (another worker of the same home) are
left to it. The newest :data:`KEEP` records stay; a home that cannot be written keeps the jobs
in memory only (one warning).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("slimserve.jobs")
J = TypeVar("J")  # service.serving.jobs.Job (which imports this module)

KEEP = 200  # records kept on disk, newest first
# What a record holds: the job's public state and who ran it (not its process or its events).
_SKIPPED = {"pid", "_cancel"}
ORPHANED = "the worker running this job ended (killed or restarted) before the job did"


def owner_token(pid: int | None = None) -> str:
    """``pid:start`` of a process (this one by default): its id and when it started (Linux), so
    a later process given the same id, e.g. in a restarted container, is not taken for it."""
    pid = os.getpid() if pid is None else pid
    try:  # field 22 of /proc/<pid>/stat, counted after the command name's closing parenthesis
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return str(pid)
    return f"{pid}:{start}"


def _alive(owner: object) -> bool:
    """Whether the process ``owner`` (an :func:`owner_token`) still runs."""
    if not isinstance(owner, str) or not owner.split(":")[0].isdigit():
        return False  # no owner recorded: nobody runs it
    pid = int(owner.split(":")[0])
    if ":" in owner or Path("/proc/self/stat").exists():
        return owner_token(pid) == owner
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return pid > 0


class JobHistory:
    """Save and read back job records in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._warned = False

    def save(self, job: Any) -> None:
        """Write ``job``'s record (atomically: a reader never sees half of one)."""
        record = {f.name: getattr(job, f.name) for f in fields(job) if f.name not in _SKIPPED}
        path = self.directory / f"{job.id}.json"
        tmp = path.with_name(f".{job.id}.{os.getpid()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record, default=str))
            os.replace(tmp, path)
        except (OSError, TypeError, ValueError) as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self._warned:
                self._warned = True
                log.warning("jobs: cannot keep job records in %s: %s", self.directory, err)

    def load(self, job_type: type[J]) -> tuple[list[J], list[J]]:
        """(records to keep as they are, orphans: jobs whose worker ended before they did).

        Orphans are returned as they were saved (queued or running); the caller ends them.
        Records of jobs still queued or running in a live worker are not returned.
        """
        kept, orphans = [], []
        names = {f.name for f in fields(job_type) if f.name not in _SKIPPED}
        for record in self._records():
            # Only the keys a Job has: a record written by another version may differ.
            job = job_type(**{k: v for k, v in record.items() if k in names})
            if job.state not in ("queued", "running"):
                kept.append(job)
            elif not _alive(record.get("owner")):
                orphans.append(job)
        return kept, orphans

    def _records(self) -> list[dict]:
        try:
            paths = sorted(
                self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True
            )
        except OSError:
            return []
        records = []
        for i, path in enumerate(paths):
            if i >= KEEP:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # unreadable or half-written by a killed process: no record
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                records.append(record)
        return records
