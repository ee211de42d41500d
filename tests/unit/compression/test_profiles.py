import pytest

from compression import PROFILES, DeviceProfile
from compression.core.errors import ProfileError
from compression.profiles import get_profile, load_profile_file

pytestmark = pytest.mark.unit


def test_builtin_profiles():
    assert set(PROFILES) == {"gpu", "cpu", "edge"}
    assert PROFILES["gpu"].round_to == 8 and PROFILES["gpu"].dtype == "float16"
    assert PROFILES["edge"].target_size_ratio is not None
    assert PROFILES["cpu"].quantization == "int8-dynamic"
    assert get_profile(PROFILES["cpu"]) is PROFILES["cpu"]


def test_custom_profile_from_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("device: cpu\nround_to: 4\nmax_drop: 0.02\nratios: [0.25, 0.5]\n")
    profile = get_profile(str(path))
    assert isinstance(profile, DeviceProfile)
    assert profile.name == "tiny" and profile.round_to == 4 and profile.ratios == [0.25, 0.5]


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("device: cpu\nspeed: fast\n")
    with pytest.raises(ProfileError, match=r"unknown key 'speed'"):
        load_profile_file(path)


def test_bad_value_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("device: tpu\n")
    with pytest.raises(ProfileError, match=r"device: .*got 'tpu'"):
        load_profile_file(path)


@pytest.mark.parametrize("text", ["threads: true\n", "ratios: [0.3, yes]\n", "max_drop: no\n"])
def test_a_boolean_where_a_number_belongs_is_refused_not_read_as_1(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text("device: cpu\n" + text)
    with pytest.raises(ProfileError, match=r"a boolean where a number or a name is expected"):
        load_profile_file(path)
    path.write_text("device: cpu\npacked_tokens: true\n")  # a boolean setting takes one
    assert load_profile_file(path).packed_tokens is True


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("device: [cpu\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile_file(path)


def test_unknown_profile_name():
    with pytest.raises(ProfileError, match=r"unknown profile 'tpu'.*\['cpu', 'edge', 'gpu'\]"):
        get_profile("tpu")


def test_ratios_must_be_fractions():
    with pytest.raises(ProfileError, match="ratios must be fractions"):
        from compression.profiles import profile_from_dict

        profile_from_dict({"name": "x", "ratios": [1.5]})


def test_allowed_criteria_and_steps_come_from_the_registries():
    from compression.profiles import profile_from_dict
    from compression.recovery.rebuild import STEPS
    from compression.structure.importance import CRITERIA

    assert list(CRITERIA) == ["magnitude", "taylor", "activation", "lsq"]
    assert list(STEPS) == ["bn", "bias", "refit", "distill"]
    with pytest.raises(ProfileError, match=r"importance: .*unknown importance criterion 'l3'"):
        profile_from_dict({"name": "x", "importance": "l3"})
    with pytest.raises(ProfileError, match=r"rebuild: .*unknown rebuild step 'prune'"):
        profile_from_dict({"name": "x", "rebuild": ["bn", "prune"]})


def test_a_registered_criterion_is_a_valid_profile_value():
    import torch

    from compression.profiles import profile_from_dict
    from compression.structure.importance import CRITERIA

    @CRITERIA.register("unit-ones")
    def ones(ctx):
        return {u.name: torch.ones(u.size) for u in ctx.units}

    try:
        assert profile_from_dict({"name": "x", "importance": "unit-ones"}).importance == "unit-ones"
    finally:
        CRITERIA._entries.pop("unit-ones")


def test_dtype_and_quantization_come_from_the_precision_registry():
    from compression.profiles import profile_from_dict

    with pytest.raises(ProfileError, match=r"dtype: .*unknown dtype 'int8'.*'bfloat16'\]"):
        profile_from_dict({"name": "x", "dtype": "int8"})
    with pytest.raises(ProfileError, match=r"quantization: .*\['none', 'int8-dynamic'\]"):
        profile_from_dict({"name": "x", "quantization": "float16"})


# ---- issue 29 item 5: every number has a range; the error names the key and the range ----------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threads": 10**9}, r"threads: .* allowed range \[1, 1024\] \(got 1000000000\)"),
        ({"round_to": 0}, r"round_to: .* allowed range \[1, 1024\] \(got 0\)"),
        ({"calibration_size": 4}, r"calibration_size: .* allowed range \[8, 65536\]"),
        ({"latency_batch": 5000}, r"latency_batch: .* allowed range \[1, 4096\]"),
        ({"latency_repeats": 2}, r"latency_repeats: .* allowed range \[3, 1000\]"),
        ({"ridge": 1e308}, r"ridge: .* allowed range \[0, 1000\] \(got 1e\+308\)"),
        ({"ridge": float("nan")}, r"ridge: Input should be a finite number; allowed range"),
        ({"ratios": [0.5] * 33}, r"ratios: .* allowed range 1 to 32 items"),
        ({"trace_time_limit_s": 0}, r"trace_time_limit_s: .* allowed range \(0, 604800\]"),
        ({"distill_seconds": 301}, r"distill_seconds: 301 is over time_limit_s \(300\)"),
        ({"max_perplexity_increase": 1e9}, r"max_perplexity_increase: .* \[0, 100\]"),
        ({"name": "x" * 129}, r"name: .* allowed range 1 to 128 characters"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_values_out_of_range_are_refused_naming_key_and_range(settings, message):
    from compression.profiles import profile_from_dict

    with pytest.raises(ProfileError, match=message):
        profile_from_dict({"name": "x", **settings})


def test_a_huge_value_is_quoted_shortened(tmp_path):
    from compression.profiles import profile_from_dict

    with pytest.raises(ProfileError) as err:
        profile_from_dict({"name": "x", "ratios": [0.5] * 10_000})
    assert len(str(err.value)) < 400 and "..." in str(err.value)


def test_every_builtin_profile_is_within_the_ranges():
    from compression.profiles import builtin_profiles, profile_from_dict

    for name, profile in builtin_profiles().items():
        assert profile_from_dict(profile.model_dump()) == profile, name
