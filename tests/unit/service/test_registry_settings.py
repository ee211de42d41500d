import json

import pytest

from service.serving.errors import UnknownVariant
from service.serving.registry import ORIGINAL, Registry
from service.serving.settings import Settings

pytestmark = pytest.mark.unit


def test_active_pointer_and_rollback_stack(tmp_path):
    reg = Registry(tmp_path)
    assert reg.active("m") == ORIGINAL
    assert reg.set_active("m", "cpu-1") == ORIGINAL
    reg.set_active("m", "cpu-2")
    assert reg.active("m") == "cpu-2"
    assert Registry(tmp_path).active("m") == "cpu-2"  # survives a restart
    assert reg.pop_previous("m") == "cpu-1" and reg.active("m") == "cpu-1"
    assert reg.pop_previous("m") == ORIGINAL and reg.active("m") == ORIGINAL
    assert reg.pop_previous("m") is None


def test_corrupt_pointer_falls_back_to_original(tmp_path):
    reg = Registry(tmp_path)
    (tmp_path / "active" / "m.json").write_text("{not json")
    assert reg.active("m") == ORIGINAL


def test_variants_live_in_the_bentoml_model_store(tmp_path):
    reg = Registry(tmp_path)
    reg.ensure_original("tiny", "py:nowhere:build")
    vdir = tmp_path / "v"
    vdir.mkdir()
    report = {
        "accepted": False,
        "speedup": 1.2,
        "metric": "accuracy",
        "metric_after": 0.9,
        "params_after": 10,
    }
    (vdir / "report.json").write_text(json.dumps(report))
    (vdir / "weights.safetensors").write_bytes(b"w")
    vid = reg.add_variant("tiny", vdir, "edge")
    rows = reg.variants("tiny")
    assert [r["id"] for r in rows] == [ORIGINAL, vid]
    assert rows[1]["accepted"] is False and rows[1]["profile"] == "edge"
    assert rows[1]["report"]["speedup"] == 1.2
    assert (reg.variant_path("tiny", vid) / "weights.safetensors").read_bytes() == b"w"
    with pytest.raises(UnknownVariant, match="has no variant 'nope'"):
        reg.variant_path("tiny", "nope")


def test_settings_from_env_and_errors_name_the_variable():
    s = Settings.from_env(
        {"SLIMSERVE_MODELS": "digits-cnn, minilm", "SLIMSERVE_MAX_BATCH_SIZE": "16"}
    )
    assert s.models == ["digits-cnn", "minilm"] and s.max_batch_size == 16
    with pytest.raises(ValueError, match="SLIMSERVE_MAX_BATCH_SIZE"):
        Settings.from_env({"SLIMSERVE_MAX_BATCH_SIZE": "zero"})
    with pytest.raises(ValueError, match="SLIMSERVE_CALIBRATION"):
        Settings.from_env({"SLIMSERVE_CALIBRATION": "sometimes"})


def test_settings_are_pydantic_settings_over_the_environment(monkeypatch):
    monkeypatch.setenv("SLIMSERVE_MODELS", "digits-mlp,minilm")
    monkeypatch.setenv("SLIMSERVE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("SLIMSERVE_THREADS", "")  # empty counts as unset
    s = Settings.from_env()
    assert (s.models, s.max_batch_size, s.threads) == (["digits-mlp", "minilm"], 8, None)
    assert Settings(max_batch_size=4).max_batch_size == 4  # keywords win over the environment
    # A mapping given to from_env is the whole environment: os.environ does not leak in.
    assert Settings.from_env({}).max_batch_size == Settings.model_fields["max_batch_size"].default
    undocumented = [n for n, f in Settings.model_fields.items() if not f.description]
    assert undocumented == [], f"settings without a description: {undocumented}"


def test_bentoml_per_request_logging_and_tracing_are_opt_in():
    from service.serving.app import _bentoml_options

    default = _bentoml_options(Settings())
    assert default["logging"] == {"access": {"enabled": False}}
    assert "/v2/models/" in default["tracing"]["excluded_urls"]
    assert _bentoml_options(Settings(access_log=True, trace_inference=True)) == {}
    assert Settings.from_env({"SLIMSERVE_ACCESS_LOG": "true"}).access_log is True


def test_available_cores_respects_affinity():
    import os

    from service.serving.core import available_cores

    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("vid", ["latest", "../../x", "x:y", "", "a\x00b", "a" * 5000, "Cpu-1", 7])
def test_variant_ids_must_have_the_form_the_registry_issues(tmp_path, vid):
    from service.serving.errors import BadRequest
    from service.serving.registry import check_variant_id

    with pytest.raises(BadRequest, match="variant id is 'original' or what the registry issued"):
        check_variant_id(vid)
    with pytest.raises(BadRequest):
        Registry(tmp_path).set_active("m", vid)
    assert check_variant_id("cpu-20250101-120000-ab12") == "cpu-20250101-120000-ab12"


def test_pinned_pointers_and_invalid_pointers(tmp_path):
    reg = Registry(tmp_path)
    reg.set_active("m", "cpu-1", pinned=True)
    assert reg.pinned("m") and Registry(tmp_path).pinned("m")
    reg.set_active("m", "cpu-2")
    assert not reg.pinned("m")
    assert reg.pop_previous("m", pinned=True) == "cpu-1" and reg.pinned("m")
    (tmp_path / "active" / "m.json").write_text(json.dumps({"variant": "latest"}))
    assert reg.pointer("m")["invalid"] is True
    reg.set_active("m", "cpu-3")  # an invalid pointer never enters the rollback stack
    assert reg.pointer("m")["history"] == [] and reg.active("m") == "cpu-3"
