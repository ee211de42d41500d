"""Issue 29, items 2-4: a corrupted file anywhere a variant comes from, or a store too small to
take one, ends in a core that starts and serves the original, says why in one log line and
``slimserve_store_refusals_total``, and labels nothing accepted that it has not loaded.

Real cores on real digits-cnn, one real compressed variant (made once per module, copied per
case), the corruption matrix of :mod:`.corruption` over every file it holds. The shared-cache
half is in ``test_cache_corruption.py``.
"""

from __future__ import annotations

import json
import logging

import pytest

from service.serving.registry import ORIGINAL

from . import harness
from . import test_variant_faults as faults
from .corruption import ALL_CASES, cases, corrupt

# The fault tests' fixtures: a core per home, an isolated model store, one compressed variant.
store, saved_variant, cores, http = faults.store, faults.saved_variant, faults.cores, faults.http
MODEL = faults.MODEL

pytestmark = pytest.mark.unit
DIGIT = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}]}


def refusals(reason: str) -> float:
    return harness.refusals(MODEL, reason)


def _stored(core, vid: str):
    return core.registry.variant_path(MODEL, vid)


def _serves_original(core, client) -> None:
    assert core.ready and core.plane.served(MODEL).active.variant == ORIGINAL
    r = client.post(f"/v2/models/{MODEL}/infer", json=DIGIT)
    assert r.status_code == 200 and r.headers["x-slimserve-variant"] == ORIGINAL, r.text


def test_the_matrix_covers_every_file_of_the_variant(saved_variant):
    names = {n for n, _ in cases(saved_variant)}
    loaded = {p.name for p in saved_variant.iterdir()} - {"report.png"}
    assert names == loaded, (names, loaded)  # weights, plan, report (+ model.onnx / smoothing)
    assert {"weights.safetensors", "plan.json", "report.json"} <= names


@pytest.mark.parametrize(("name", "kind"), ALL_CASES)
def test_a_corrupted_stored_variant_is_refused_everywhere_and_the_original_serves(
    name, kind, cores, http, saved_variant, caplog
):
    if not (saved_variant / name).is_file():
        pytest.skip(f"this variant has no {name}")
    first = cores()
    bad = first.registry.add_variant(MODEL, saved_variant, "fast")
    good = first.registry.add_variant(MODEL, saved_variant, "fast")
    first.variants.activate(MODEL, bad)
    first.variants.activate(MODEL, good)  # serves `good`; a rollback returns to `bad`
    core = cores()  # only `good` is loaded: activate and rollback must read `bad` from disk
    corrupt(_stored(core, bad), name, kind)
    c = http(core)
    before = core.registry.pointer(MODEL)
    for method, path, body in (
        ("POST", f"/models/{MODEL}/rollback", None),
        ("POST", f"/models/{MODEL}/activate", {"variant": bad}),
    ):
        r = c.admin(method, path, json=body)
        assert r.status_code == 409, (name, kind, path, r.status_code, r.text[:300])
        assert "refused" in r.json()["error"], r.text
    assert core.plane.served(MODEL).active.variant == good
    assert core.registry.pointer(MODEL)["history"] == before["history"]
    # The pointer names the corrupted variant (what a restart after the corruption finds).
    core.registry.pop_previous(MODEL)
    assert core.registry.active(MODEL) == bad
    counted = refusals("variant_corrupted")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="slimserve"):
        restarted = cores()
    _serves_original(restarted, http(restarted))
    assert restarted.registry.active(MODEL) == ORIGINAL  # the pointer repaired
    assert refusals("variant_corrupted") == counted + 1
    lines = [r.getMessage() for r in caplog.records if "[variant_corrupted]" in r.getMessage()]
    assert len(lines) == 1 and bad in lines[0], lines


def test_variants_with_an_unreadable_report_are_listed_without_a_500(cores, http, saved_variant):
    core = cores()
    vid = core.registry.add_variant(MODEL, saved_variant, "fast")
    c = http(core)
    for text in ("[]", "null", "{", ""):
        (_stored(core, vid) / "report.json").write_text(text)
        r = c.admin("GET", f"/models/{MODEL}/variants")
        assert r.status_code == 200, r.text
        row = next(v for v in r.json()["variants"] if v["id"] == vid)
        assert row["report"] is None, row


def test_a_store_under_min_free_bytes_skips_start_up_compression_and_serves(cores, http, caplog):
    counted = refusals("store_full")
    with caplog.at_level(logging.ERROR, logger="slimserve"):
        core = cores(auto_compress=True, min_free_bytes=1 << 62)  # more than any disk
    _serves_original(core, http(core))
    assert core.jobs.list() == [], [j.summary() for j in core.jobs.list()]
    assert refusals("store_full") == counted + 1
    lines = [r.getMessage() for r in caplog.records if "[store_full]" in r.getMessage()]
    assert len(lines) == 1 and "SLIMSERVE_MIN_FREE_BYTES" in lines[0], lines


def test_a_job_whose_accepted_variant_does_not_load_stores_nothing(cores, saved_variant, tmp_path):
    core = cores()
    stored = [v["id"] for v in core.registry.variants(MODEL)]  # the module shares one store
    job = faults._job(tmp_path / "out", saved_variant)
    (tmp_path / "out" / "plan.json").write_text("[]")
    core.jobs._finish(job, "succeeded", tmp_path / "out", started=0.0)
    assert job.state == "failed" and "plan.json is corrupted" in job.error, job.detail()
    assert [v["id"] for v in core.registry.variants(MODEL)] == stored


def test_the_variant_report_is_vouched_for_by_the_plan(saved_variant):
    plan = json.loads((saved_variant / "plan.json").read_text())
    assert {"weights_sha256", "report_sha256", "plan_sha256"} <= set(plan)
