"""Job bookkeeping: what a client polling /admin/jobs/{id} may observe."""

from __future__ import annotations

import time

import pytest

from service.serving.jobs import Job, JobRunner

pytestmark = pytest.mark.unit


def _runner(tmp_path, on_done) -> JobRunner:
    return JobRunner(tmp_path / "jobs", on_done=on_done)


def test_state_is_published_after_the_variant_is_registered(tmp_path):
    seen = {}

    def on_done(job: Job, out) -> None:
        seen["state_during_on_done"] = job.state
        job.variant = "cpu-123"

    runner = _runner(tmp_path, on_done)
    job = Job(id="j1", model="m", profile="cpu", state="running")
    job.report = {"accepted": True}
    runner._finish(job, "succeeded", None, started=0.0)
    assert seen["state_during_on_done"] == "running"
    assert job.state == "succeeded" and job.variant == "cpu-123"
    assert job.progress == 1.0 and job.finished is not None


def test_a_failure_while_finishing_marks_the_job_failed(tmp_path):
    def on_done(job: Job, out) -> None:
        raise ValueError("checksum mismatch for weights.safetensors")

    runner = _runner(tmp_path, on_done)
    job = Job(id="j2", model="m", profile="cpu", state="running")
    job.report = {"accepted": True}
    runner._finish(job, "succeeded", None)
    assert job.state == "failed"
    assert job.error == "ValueError: checksum mismatch for weights.safetensors"


def test_a_runner_starts_no_thread_until_started(tmp_path):
    import threading

    before = {t.name for t in threading.enumerate()}
    runner = _runner(tmp_path, lambda job, out: None)
    assert {t.name for t in threading.enumerate()} == before
    runner.start()
    assert "jobs" in {t.name for t in threading.enumerate()}


def test_a_job_cancelled_while_queued_never_starts(tmp_path):
    finished = []
    runner = _runner(tmp_path, lambda job, out: finished.append(job.state))
    job = Job(id="j3", model="m", profile="cpu")
    runner.jobs[job.id], runner._specs[job.id] = job, {"out": str(tmp_path / "out")}
    runner.cancel(job.id)  # cancelled before the runner's loop sees it
    runner._queue.put(job.id)
    runner.start()
    deadline = time.monotonic() + 10
    while job.id in runner._specs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.id not in runner._specs  # the loop took it off the queue ...
    assert job.state == "cancelled" and finished == ["queued"]  # ... and did not run it


# ---- issue 15 item 6: a job process dies with its worker; no duplicate job processes -------------

WORKER = """
import sys, time
from pathlib import Path
from service.serving.jobs import JobRunner

runner = JobRunner(Path(sys.argv[1]), on_done=lambda job, out: None)
runner.start()
job = runner.submit("digits-cnn", "digits-cnn", "cpu", None, 600)
while job.progress == 0.0:  # the child reports progress: it is compressing
    time.sleep(0.05)
print(job.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_job_process_dies_with_a_worker_killed_by_sigkill(tmp_path):
    import signal
    import subprocess
    import sys

    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "jobs")], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(worker.stdout.readline())
        assert not _gone(child), "the job process should be running"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 30  # the kernel signals at once; 30 s is only a bound
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child), f"job process {child} outlived its worker"
    finally:
        if worker.poll() is None:
            worker.kill()


def test_a_job_waits_while_another_job_process_holds_the_lock(tmp_path):
    from service.serving.jobs import hold_lock, lock_holder

    runner = _runner(tmp_path, lambda job, out: None)
    held = hold_lock(runner.lock)  # a job process of an earlier worker, still running
    assert held is not None and lock_holder(runner.lock) is not None
    runner.start()
    job = runner.submit("digits-cnn", "digits-cnn", "cpu", None, 60)
    deadline = time.monotonic() + 10
    while "waiting for the job process" not in job.message and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "waiting for the job process" in job.message and job.pid is None, job.detail()
    runner.cancel(job.id)
    while job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.state == "cancelled" and job.pid is None
    held.close()
    assert lock_holder(runner.lock) is None


def _running_job(tmp_path, finished: list):
    runner = _runner(tmp_path, lambda job, out: finished.append(job.state))
    runner.start()
    job = runner.submit("digits-cnn", "digits-cnn", "cpu", None, 600)
    deadline = time.monotonic() + 120
    while job.progress == 0.0 and job.state in ("queued", "running"):
        assert time.monotonic() < deadline, job.detail()
        time.sleep(0.05)
    assert job.pid is not None, job.detail()
    return runner, job


def test_a_job_process_killed_with_sigkill_ends_failed(tmp_path):
    import os
    import signal

    runner, job = _running_job(tmp_path, finished := [])
    os.kill(job.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.state == "failed" and "job process died" in job.error, job.detail()
    assert finished == ["running"]


def test_a_cancelled_job_process_is_gone(tmp_path):
    runner, job = _running_job(tmp_path, [])
    pid = job.pid
    runner.cancel(job.id)
    deadline = time.monotonic() + 30
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid) and job.state == "cancelled", job.detail()


# ---- issue 29 item 7: a job's record outlives the worker that ran it ----------------------------

HOLDER = """
import sys, threading, time
from pathlib import Path
from service.serving.jobs import JobRunner

runner = JobRunner(Path(sys.argv[1]), on_done=lambda job, out: None)
runner._run = lambda job, spec: threading.Event().wait()  # runs until the worker dies
runner.start()
running = runner.submit("digits-cnn", "digits-cnn", "cpu", None, 600)
queued = runner.submit("minilm", "minilm", "edge", None, 600)
done = runner.submit("minilm", "minilm", "cpu", None, 600)
runner.cancel(done.id)
while running.state != "running":
    time.sleep(0.01)
print(running.id, queued.id, done.id, flush=True)
time.sleep(600)
"""


def test_jobs_of_a_killed_worker_stay_in_the_history_ended_failed(tmp_path):
    import signal
    import subprocess
    import sys

    from service.serving.jobhistory import ORPHANED

    worker = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "jobs")], stdout=subprocess.PIPE, text=True
    )
    try:
        running, queued, cancelled = worker.stdout.readline().split()
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    finished = []
    runner = _runner(tmp_path, lambda job, out: finished.append((job.id, job.outcome)))
    runner.start()  # the restarted worker
    jobs = {j.id: j for j in runner.list()}
    assert set(jobs) == {running, queued, cancelled}
    for vid in (running, queued):
        assert jobs[vid].state == "failed" and jobs[vid].error == ORPHANED, jobs[vid].detail()
        assert jobs[vid].finished is not None
    assert jobs[cancelled].state == "cancelled" and jobs[cancelled].error is None
    assert sorted(finished) == sorted([(running, "failed"), (queued, "failed")])  # counted once
    assert runner.get(running).detail()["profile"] == "cpu"
    again = _runner(tmp_path, lambda job, out: finished.append(job.id))
    again.start()  # a second restart finds them ended: nothing to end again
    assert {j.id: j.state for j in again.list()} == {j.id: j.state for j in jobs.values()}
    assert len(finished) == 2


def test_a_job_record_of_a_live_worker_is_left_to_it(tmp_path):
    runner = _runner(tmp_path, lambda job, out: None)
    job = runner.submit("digits-cnn", "digits-cnn", "cpu", None, 60)  # queued in this process
    other = _runner(tmp_path, lambda job, out: None)  # another worker of the same home
    other.start()
    assert job.id not in other.jobs
    assert runner.jobs[job.id].state == "queued"
    runner.cancel(job.id)
