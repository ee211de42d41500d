"""Issue 29 items 5, 6 and 7 in process: bounded inline profiles, rejected variants served only
by force, every error JSON, one Authorization header.

A real core serving digits-cnn with its own BentoML model store; a real compressed variant
(compressed once per module with a fast profile) stored as accepted and as rejected.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from prometheus_client import REGISTRY

from service.serving.app import create_app
from service.serving.core import available_cores

from .harness import QUICK_PROFILE, TOKEN, isolated_model_store, started_core

pytestmark = pytest.mark.unit
MODEL = "digits-cnn"
FAST = QUICK_PROFILE
STRICT = {**FAST, "name": "strict", "ratios": [0.9], "max_drop": 0.0}


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    with (
        isolated_model_store(tmp_path_factory.mktemp("bentoml-models")),
        started_core(tmp_path_factory.mktemp("home"), models=[MODEL]) as core,
    ):
        yield core


@pytest.fixture(scope="module")
def stored(core, tmp_path_factory, digits_cnn_bundle):
    """Real compressed digits-cnns: one accepted, one rejected (90% of channels, no drop
    allowed), both stored as a job stores them."""
    from compression.profiles import profile_from_dict

    ids = {}
    for kind, settings in (("accepted", FAST), ("rejected", STRICT)):
        out = tmp_path_factory.mktemp(kind)
        variant = digits_cnn_bundle.compress(profile_from_dict(settings))
        assert variant.report.accepted == (kind == "accepted"), variant.report.to_dict()
        variant.save(out)
        ids[kind] = core.registry.add_variant(MODEL, out, settings["name"])
        ids[f"{kind}_reason"] = variant.report.reason
    return ids


def _error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


# ---- item 5: every inline profile value meets a range; the 400 names the key and the range -------


@pytest.mark.parametrize(
    ("profile", "needle"),
    [
        ({"threads": 64}, rf"threads: 64 is more than the {available_cores()} core\(s\).*"
                          rf"allowed range \[1, {available_cores()}\]"),
        ({"threads": 1e9}, r"threads: .*allowed range \[1, 1024\] \(got 1000000000"),
        ({"threads": 0}, r"threads: .*allowed range \[1, 1024\] \(got 0\)"),
        ({"calibration_size": 10**9}, r"calibration_size: .*allowed range \[8, 65536\]"),
        ({"latency_batch": 100000}, r"latency_batch: .*allowed range \[1, 4096\]"),
        ({"latency_repeats": 10**6}, r"latency_repeats: .*allowed range \[3, 1000\]"),
        ({"round_to": 4096}, r"round_to: .*allowed range \[1, 1024\]"),
        ({"distill_seconds": 1e9}, r"distill_seconds: .*allowed range \[0, 604800\]"),
        ({"distill_seconds": 400, "time_limit_s": 300},
         r"distill_seconds: 400 is over time_limit_s \(300\); allowed range \[0, 300\]"),
        ({"ratios": [0.5] * 33}, r"ratios: .*allowed range 1 to 32 items"),
        ({"ratios": []}, r"ratios: .*allowed range 1 to 32 items"),
        ({"ridge": 1e308}, r"ridge: .*allowed range \[0, 1000\] \(got 1e\+308\)"),
        ({"time_limit_s": 1e12}, r"time_limit_s: .*allowed range \(0, 604800\]"),
        ({"target_speedup": 1e9}, r"target_speedup: .*allowed range \(1, 1000\]"),
        ({"threads": True}, r"threads: .*a boolean where a number or a name is expected"),
        ({"max_drop": False}, r"max_drop: .*a boolean where a number or a name is expected"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)  # fmt: skip
def test_an_inline_profile_value_out_of_range_is_a_400_naming_key_and_range(
    client, core, profile, needle
):
    jobs = len(core.jobs.jobs)
    r = client.admin("POST", f"/models/{MODEL}/compress", json={"profile": profile})
    error = _error(r, 400)
    assert re.search(needle, error), error
    assert len(core.jobs.jobs) == jobs  # nothing was queued


def test_a_device_or_dtype_this_server_lacks_is_a_400(client, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = client.admin("POST", f"/models/{MODEL}/compress", json={"profile": {"device": "cuda"}})
    assert _error(r, 400) == (
        "profile: device: 'cuda' is not on this server (no CUDA device); allowed: ['cpu']"
    )
    r = client.admin("POST", f"/models/{MODEL}/compress", json={"profile": {"dtype": "float16"}})
    assert "dtype: 'float16' needs a CUDA device" in _error(r, 400)
    assert "['float32', 'bfloat16']" in r.json()["error"]


def test_infinity_and_nan_are_no_profile_values():
    from compression.core.errors import ProfileError
    from compression.profiles import profile_from_dict

    for value in (float("inf"), float("nan")):
        with pytest.raises(ProfileError, match=r"ridge: Input should be a finite number"):
            profile_from_dict({"name": "x", "ridge": value})


# ---- item 6: a rejected variant serves only when forced; logged and counted ---------------------


def _forced() -> float:
    value = REGISTRY.get_sample_value("slimserve_forced_activations_total", {"model": MODEL})
    return value or 0.0


def test_a_rejected_variant_is_refused_with_its_reason_unless_forced(client, core, stored, caplog):
    vid = stored["rejected"]
    before = _forced()
    r = client.admin("POST", f"/models/{MODEL}/activate", json={"variant": vid})
    assert _error(r, 409) == (
        f"variant {vid!r} of {MODEL!r} was rejected: its verification did not accept it "
        f'({stored["rejected_reason"]}); send "force": true to serve it anyway'
    )
    assert core.plane.served(MODEL).active.variant != vid and _forced() == before
    with caplog.at_level(logging.WARNING, logger="slimserve"):
        r = client.admin("POST", f"/models/{MODEL}/activate", json={"variant": vid, "force": True})
    assert r.status_code == 200 and r.json() == {"model": MODEL, "active_variant": vid}, r.text
    assert core.plane.served(MODEL).active.variant == vid and _forced() == before + 1
    assert f"rejected variant {vid} served by force" in caplog.text
    swaps = REGISTRY.get_sample_value("slimserve_swaps_total", {"model": MODEL, "reason": "forced"})
    assert swaps and swaps >= 1
    # An accepted variant and the original need no force.
    for ok in (stored["accepted"], "original"):
        r = client.admin("POST", f"/models/{MODEL}/activate", json={"variant": ok})
        assert r.status_code == 200, r.text
    assert _forced() == before + 1


def test_a_variant_live_traffic_rejected_is_refused_too(client, core, stored):
    vid = stored["accepted"]
    marks = core.settings.home / "live" / MODEL / "rejected.json"
    marks.parent.mkdir(parents=True, exist_ok=True)
    mark = {"variant": vid, "when": "canary", "budget": 0.95,
            "live": {"metric": "top1", "value": 0.81, "window": 64}}  # fmt: skip
    marks.write_text(json.dumps([mark]))
    try:
        r = client.admin("POST", f"/models/{MODEL}/activate", json={"variant": vid})
        assert "live traffic rejected it (canary: top1 0.81 under its budget 0.95)" in _error(
            r, 409
        )
        r = client.admin("POST", f"/models/{MODEL}/activate", json={"variant": "original"})
        assert r.status_code == 200, r.text
    finally:
        marks.unlink()


def test_force_must_be_a_boolean(client, stored):
    body = {"variant": stored["rejected"], "force": "yes please"}
    r = client.admin("POST", f"/models/{MODEL}/activate", json=body)
    assert _error(r, 400).startswith("force: "), r.text


# ---- item 7: every error is JSON; one Authorization header -------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "needle"),
    [
        ("GET", "/v2/models/digits-cnn%0A/ready/x", 404, "no route GET '/v2/models/digits-cnn\\n/ready/x'"),
        ("GET", "http://t//v2/models/digits-cnn", 404, "no route GET '//v2/models/digits-cnn'"),
        ("POST", "/nowhere", 404, "the routes are listed at /docs.json"),
        ("GET", "/v2/models/digits-cnn/infer", 405, "allowed: POST"),
        ("PUT", "/admin/models", 405, "method PUT not allowed on '/admin/models'; allowed: GET, HEAD"),
        ("POST", "/admin/jobs/abc", 405, "allowed: DELETE, GET, HEAD"),
    ],
)  # fmt: skip
def test_paths_and_methods_no_route_takes_answer_json(client, method, path, status, needle):
    r = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert needle in _error(r, status)
    if status == 405:
        assert r.headers["allow"], r.headers


def test_a_bug_answers_a_json_500(core, monkeypatch):
    import asyncio

    import httpx

    def broken():
        raise KeyError("a bug")

    async def call() -> httpx.Response:
        # As a server does: the app answers, then re-raises for the log (not into the client).
        transport = httpx.ASGITransport(app=create_app(core), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/admin/models", headers={"Authorization": f"Bearer {TOKEN}"})

    monkeypatch.setattr(core.plane, "models", broken)
    r = asyncio.run(call())
    assert _error(r, 500) == "internal server error (logged)"


@pytest.mark.parametrize(
    "values",
    [[f"Bearer {TOKEN}", "Bearer nope"], [f"Bearer {TOKEN}", f"Bearer {TOKEN}"], ["x", f"Bearer {TOKEN}"]],
)  # fmt: skip
def test_more_than_one_authorization_header_is_a_401(client, values):
    headers = [("Authorization", v) for v in values]
    r = client.request("GET", "/admin/models", headers=headers)
    assert _error(r, 401) == (
        "2 Authorization headers: send exactly one 'Authorization: Bearer <token>'"
    )
    assert client.admin("GET", "/models").status_code == 200


def test_what_bentoml_answers_outside_the_app_is_json_too(core):
    """The app mounted at "/" as BentoML mounts it: a newline in the path never reaches it
    (the mount's pattern stops there) and BentoML's router answered plain text."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from service.serving.guards import JsonErrors

    async def livez(request):
        return PlainTextResponse("\n")

    async def bug(request):
        raise RuntimeError("a bug")

    outer = Starlette(
        routes=[Route("/livez", livez), Route("/bug", bug), Mount("/", app=create_app(core))]
    )

    async def call(method: str, path: str, app=outer) -> httpx.Response:
        transport = httpx.ASGITransport(app=JsonErrors(app), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.request(method, path, json={})

    r = asyncio.run(call("POST", "/v2/models/digits-cnn%0A/infer"))
    assert _error(r, 404) == (
        "no route POST '/v2/models/digits-cnn\\n/infer'; the routes are listed at /docs.json"
    )
    assert "no route PUT '/livez'" in _error(asyncio.run(call("PUT", "/livez")), 404)
    r = asyncio.run(call("PUT", "/livez", app=Starlette(routes=[Route("/livez", livez)])))
    assert _error(r, 405).startswith("method PUT not allowed on '/livez'; allowed: ")
    assert "GET" in r.headers["allow"]
    assert _error(asyncio.run(call("GET", "/bug")), 500) == "internal server error (logged)"
    assert asyncio.run(call("GET", "/livez")).text == "\n"  # answers that are no error pass
    r = asyncio.run(call("GET", "/v2/models/nope"))  # the app's own JSON errors pass as they are
    assert "unknown model" in _error(r, 404)


def test_v2_parameters_are_an_object_or_null_as_the_document_says(client):
    """What /docs.json forbids is refused: ``"parameters": []`` (or 0, false, "") was taken as
    no parameters; null still means none."""
    tensor = {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}

    def body(where: str, value) -> dict:
        doc = {"inputs": [dict(tensor)], "outputs": [{"name": "SCORES"}]}
        target = {"request": doc, "input": doc["inputs"][0], "output": doc["outputs"][0]}[where]
        target["parameters"] = value
        return doc

    for where in ("request", "input", "output"):
        for value in ([], 0, False, ""):
            r = client.post(f"/v2/models/{MODEL}/infer", json=body(where, value))
            assert "'parameters' must be an object" in _error(r, 400), (where, value)
        r = client.post(f"/v2/models/{MODEL}/infer", json=body(where, None))
        assert r.status_code == 200, (where, r.text)
