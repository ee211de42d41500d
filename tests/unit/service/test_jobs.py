"""Job bookkeeping: what a client polling /admin/jobs/{id} may observe."""

from __future__ import annotations

import time

from service.serving.jobs import Job, JobRunner


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
