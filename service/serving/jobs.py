"""Compression jobs: run ``compression.compress`` in a child process, one at a time.

A child process has its own torch thread count, cannot starve the serving threads of the GIL,
and cannot crash the server; cancelling or timing out a job terminates it. A job process dies
with the worker that started it (Linux: a parent-death signal, set first thing in the child),
and holds ``jobs/job.lock`` for its life: a worker restarted after a crash waits for an
earlier job process still running instead of starting a duplicate. Progress comes back
over a pipe. A job ends ``succeeded`` (accepted, swapped in), ``rejected`` (over budget, stored,
the current variant keeps serving), ``failed`` (error or time limit) or ``cancelled``.
Each job's record is also kept on disk (:mod:`service.serving.jobhistory`): a worker killed
while it ran jobs leaves them in the history of the next, ended ``failed``.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing as mp
import os
import queue
import re
import secrets
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.serving.errors import UnknownJob, scrub_paths
from service.serving.jobhistory import ORPHANED, JobHistory, owner_token

log = logging.getLogger("slimserve.jobs")
# Job ids are 12 hex digits (secrets.token_hex(6)); anything outside this form is unknown.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
STATES = ("queued", "running", "succeeded", "rejected", "failed", "cancelled")


@dataclass
class Job:
    """One compression job's public state."""

    id: str
    model: str
    profile: str
    state: str = "queued"
    progress: float = 0.0
    message: str = ""
    report: dict | None = None
    variant: str | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    seconds: float | None = None
    outcome: str | None = None  # for metrics: the state, or "timeout"
    auto: bool = False  # started by the service (start-up), not by an operator
    pid: int | None = None  # the job process, while it runs
    owner: str = field(default_factory=owner_token)  # the worker that runs it
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def summary(self) -> dict:
        return {
            "id": self.id,
            "model": self.model,
            "profile": self.profile,
            "state": self.state,
            "progress": round(self.progress, 3),
        }

    def detail(self) -> dict:
        return {
            **self.summary(),
            "message": self.message,
            "report": self.report,
            "variant": self.variant,
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
        }


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the thread that started it exits (Linux).

    Set first thing in the child: a worker killed with ``kill -9`` leaves no orphan running a
    compression (parent 1, full CPU, a GB of memory). The signal follows the *thread* that
    forked: the job runner's thread, which lives as long as its process. If the parent is
    already gone (it died before this call), exit at once.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent_pid:
        os._exit(1)


def hold_lock(path: Path):
    """An exclusive lock on ``path`` for this process's life, or None if another holds it."""
    fh = open(path, "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def lock_holder(path: Path) -> int | None:
    """The pid holding the lock on ``path``, or None when it is free."""
    fh = hold_lock(path)
    if fh is not None:
        fh.close()  # free: released at once
        return None
    try:
        return int(path.read_text().strip() or 0) or -1
    except (OSError, ValueError):
        return -1


def _child(spec: dict, conn) -> None:
    """Entry point of the job process: build the bundle, compress, save, report back."""
    die_with_parent(spec["parent_pid"])
    lock = hold_lock(Path(spec["lock"]))
    if lock is None:
        conn.send(("error", "another compression job process is running in this home", ""))
        conn.close()
        return
    try:
        import torch

        torch.set_num_threads(spec["threads"])
        # After die_with_parent: at module level these would load (seconds) first, unpickling _child
        from compression.profiles import get_profile, profile_from_dict
        from service.models.sources import resolve
        from service.serving.livedata import load_live_calibration

        bundle = resolve(spec["source"])
        if spec.get("live_calibration"):
            load_live_calibration(bundle, Path(spec["live_calibration"]))
        if spec.get("profile_inline") is not None:  # sent over HTTP, validated by the server
            profile = profile_from_dict(spec["profile_inline"])
        else:
            profile = get_profile(spec["profile_path"] or spec["profile"])
        if spec.get("time_limit_s"):
            profile = profile.model_copy(update={"time_limit_s": spec["time_limit_s"]})
        if spec.get("profile_update"):  # e.g. amounts below one live traffic rejected
            profile = profile.model_copy(update=spec["profile_update"])
        if bundle.task != "embedding":  # neighbour recall is a check of embedding spaces
            profile = profile.model_copy(update={"min_neighbour_recall": None})
        variant = bundle.compress(profile, progress=lambda f, m: conn.send(("progress", f, m)))
        variant.save(spec["out"])
        conn.send(("done", variant.report.to_dict()))
    except BaseException as err:  # report every failure to the parent, then exit
        conn.send(("error", f"{type(err).__name__}: {err}", traceback.format_exc(limit=5)))
    finally:
        conn.close()


class JobRunner:
    """Queue of jobs executed one at a time in child processes."""

    def __init__(
        self, workdir: Path, on_done: Callable[[Job, Path | None], None], threads: int = 1
    ):
        self.workdir = Path(workdir)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a read-only home: jobs will fail, serving goes on
            log.warning("jobs: cannot create %s (%s)", self.workdir, err.strerror)
        self.lock = self.workdir / "job.lock"  # held by the running job process
        self.on_done = on_done
        self.threads = threads
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._specs: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.history = JobHistory(self.workdir / "history")
        kept, self._orphans = self.history.load(Job)
        self.jobs.update({job.id: job for job in kept + self._orphans})

    def start(self) -> None:
        """Start running queued jobs (a daemon thread; jobs submitted before wait for it).

        Jobs an earlier worker was running when it ended end now, ``failed``, and are counted.
        """
        for job in self._orphans:
            log.warning("job %s (%s, %s): %s", job.id, job.model, job.profile, ORPHANED)
            job.error = ORPHANED
            self._finish(job, "failed", None)
        self._orphans = []
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Cancel every job still queued or running (their processes end)."""
        for job in list(self.jobs.values()):
            if job.state in ("queued", "running"):
                self.cancel(job.id)

    def submit(
        self,
        model: str,
        source: str,
        profile: str,
        profile_path: str | None,
        time_limit_s: float,
        live_calibration: Path | None = None,
        profile_update: dict | None = None,
        profile_inline: dict | None = None,
        auto: bool = False,
    ) -> Job:
        job = Job(id=secrets.token_hex(6), model=model, profile=profile, auto=auto)
        spec = {
            "source": source,
            "profile": profile,
            "profile_path": profile_path,
            "time_limit_s": time_limit_s,
            "threads": self.threads,
            "out": str(self.workdir / job.id),
            "live_calibration": str(live_calibration) if live_calibration else None,
            "profile_update": profile_update or {},
            "profile_inline": profile_inline,
            "parent_pid": os.getpid(),
            "lock": str(self.lock),
        }
        with self._lock:
            self.jobs[job.id] = job
            self._specs[job.id] = spec
        self.history.save(job)
        self._queue.put(job.id)
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        with self._lock:  # against _loop taking the job at the same moment
            job._cancel.set()
            queued = job.state == "queued"
        if queued:
            self._finish(job, "cancelled", None)
        return job

    def get(self, job_id: str) -> Job:
        """The job ``job_id``, or :class:`UnknownJob` (404)."""
        job = self.jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            shown = job_id if JOB_ID.fullmatch(job_id) else job_id[:24] + "..."
            raise UnknownJob(f"unknown job {shown!r}: GET /admin/jobs lists the jobs")
        return job

    def list(self) -> list[Job]:
        return sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)

    def _loop(self) -> None:
        while True:
            job = self.jobs[self._queue.get()]
            with self._lock:
                spec = self._specs.pop(job.id)
                if job.state != "queued" or job._cancel.is_set():
                    continue
                job.state, job.message = "running", "starting"
            self.history.save(job)
            try:
                self._run(job, spec)
            except Exception as err:  # never let one job stop the runner
                log.exception("job %s crashed the runner", job.id)
                job.error = f"{type(err).__name__}: {err}"
                self._finish(job, "failed", None)

    def _wait_for_lock(self, job: Job, patience_s: float = 120.0) -> bool:
        """Wait (queued) while another job process of this home runs; False if cancelled or
        it is still running after ``patience_s`` (the job then fails: no duplicate runs)."""
        deadline = time.monotonic() + patience_s
        while (holder := lock_holder(self.lock)) is not None:
            if job._cancel.is_set():
                self._finish(job, "cancelled", None)
                return False
            if time.monotonic() > deadline:
                job.error = f"an earlier compression job process (pid {holder}) is still running"
                self._finish(job, "failed", None)
                return False
            job.message = f"waiting for the job process pid {holder} to end"
            time.sleep(0.5)
        return True

    def _run(self, job: Job, spec: dict) -> None:
        if not self._wait_for_lock(job):
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(spec, child), daemon=True, name=f"job-{job.id}")
        started = time.monotonic()
        proc.start()
        job.pid = proc.pid
        child.close()
        # Generous margin over the engine's own time limit: model loading and saving.
        deadline = started + spec["time_limit_s"] * 1.2 + 60
        result = None
        while result is None:
            if job._cancel.is_set():
                proc.terminate()
                self._finish(job, "cancelled", None, started)
                return
            if time.monotonic() > deadline:
                proc.terminate()
                job.error = f"time limit: no result after {spec['time_limit_s']:.0f} s"
                self._finish(job, "failed", None, started, outcome="timeout")
                return
            if parent.poll(0.2):
                try:
                    msg = parent.recv()
                except EOFError:
                    proc.join(5)
                    job.error = f"job process died (exit code {proc.exitcode})"
                    self._finish(job, "failed", None, started)
                    return
                if msg[0] == "progress":
                    job.progress, job.message = float(msg[1]) * 0.95, msg[2]
                else:
                    result = msg
            elif not proc.is_alive() and not parent.poll(0):
                job.error = f"job process died (exit code {proc.exitcode})"
                self._finish(job, "failed", None, started)
                return
        proc.join(10)
        if result[0] == "error":
            job.error = scrub_paths(result[1])
            log.warning("job %s failed: %s\n%s", job.id, result[1], result[2])
            self._finish(job, "failed", None, started)
            return
        job.report = result[1]
        state = "succeeded" if job.report["accepted"] else "rejected"
        self._finish(job, state, Path(spec["out"]), started)

    def _finish(
        self,
        job: Job,
        state: str,
        out: Path | None,
        started: float | None = None,
        outcome: str | None = None,
    ) -> None:
        # The state is published last: a client polling the job sees "succeeded" only once
        # the variant is registered (and activated), never before.
        job.outcome = outcome or state
        job.seconds = None if started is None else round(time.monotonic() - started, 2)
        try:
            self.on_done(job, out)
        except Exception as err:  # e.g. the variant failed its checksum on load, a full disk
            log.exception("job %s: finishing failed", job.id)
            state, job.error = "failed", scrub_paths(f"{type(err).__name__}: {err}")
        finally:
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
        job.finished = time.time()
        job.pid = None
        job.progress = 1.0 if state in ("succeeded", "rejected") else job.progress
        job.message = job.outcome
        job.state = state
        self.history.save(job)
