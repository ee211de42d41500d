"""The fleet inside a core: who compresses, who waits, and an outcome nobody retries.

Real cores on digits-mlp share a directory store; no compression runs here (a job's end is
handed to the fleet as the job runner would), so each case takes a second.
"""

from __future__ import annotations

import json

import pytest

from service.serving.core import Core
from service.serving.jobs import Job
from service.serving.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "digits-mlp"


@pytest.fixture
def replicas(tmp_path):
    """Start replicas (cores, each its own home) on one store; jobs are never run here."""
    made: list[Core] = []

    def start(name: str, **kw) -> Core:
        settings = Settings(
            home=tmp_path / name, models=[MODEL], profile="cpu", auto_compress=False,
            variant_cache=tmp_path / "store", fleet_poll_s=0.2, **kw,
        )  # fmt: skip
        core = Core(settings).start()
        core.jobs.submit = lambda *a, **k: Job(id=f"{name}-job", model=MODEL, profile="cpu")
        made.append(core)
        return core

    yield start
    for core in made:
        core.close()


def test_one_replica_takes_the_lease_and_the_others_wait(replicas):
    a, b = replicas("a"), replicas("b")
    assert a.fleet.start_model(MODEL) is False  # a compresses
    assert b.fleet.start_model(MODEL) is True and MODEL in b.fleet.waiting  # b waits
    off = replicas("c", jobs=False)
    assert off.fleet.start_model(MODEL) is True and MODEL not in off.fleet.leases


@pytest.mark.parametrize(
    ("report", "state"),
    [({"accepted": False, "reason": "no candidate within budget"}, "rejected"), (None, "failed")],
)
def test_a_rejected_or_failed_key_is_published_and_not_retried(replicas, tmp_path, report, state):
    a = replicas("a")
    assert a.fleet.start_model(MODEL) is False
    job = Job(id="j", model=MODEL, profile="cpu", auto=True, report=report, state="failed")
    job.error = None if report else "compression process exited with -9"
    a.fleet.finished(job)
    assert MODEL not in a.fleet.leases  # the lease ended with the outcome
    (outcome,) = (tmp_path / "store" / "outcomes").iterdir()
    assert json.loads(outcome.read_text())["state"] == state
    later = replicas("later")
    assert later.fleet.start_model(MODEL) is True  # declined: no job, no waiting
    assert MODEL not in later.fleet.leases and MODEL not in later.fleet.waiting


def test_an_accepted_variant_under_canary_keeps_the_lease_until_it_is_decided(replicas):
    a = replicas("a")
    assert a.fleet.start_model(MODEL) is False
    job = Job(id="j", model=MODEL, profile="cpu", auto=True, report={"accepted": True})
    job.variant = "v1"
    a.fleet.finished(job)
    assert MODEL in a.fleet.leases  # published only once the canary is promoted
    a.fleet.canary_dropped(MODEL, "v1")
    assert MODEL not in a.fleet.leases and a.fleet.outcome(MODEL)["state"] == "rejected_live"


def test_a_replica_that_cannot_start_its_job_gives_the_lease_back_to_the_fleet(replicas):
    from service.serving.errors import StoreUnavailable

    a, b = replicas("a"), replicas("b")

    def full(*args, **kwargs):
        raise StoreUnavailable("the store has 1 MB free, needs 2 MB")

    a.variants.compress = full  # a's own disk is full
    a.variants.auto_compress(MODEL)  # takes the lease, cannot queue the job
    assert MODEL not in a.fleet.leases and MODEL in a.fleet.waiting
    assert a.fleet.outcome(MODEL) is None  # the key did not fail: nothing published
    assert b.fleet.start_model(MODEL) is False  # another replica compresses at once
    b.fleet._release(MODEL)  # free again (b died, say): a still does not take it
    a.fleet._look(MODEL)
    assert MODEL not in a.fleet.leases and MODEL in a.fleet.waiting
