"""A model that cannot be pruned still gets the profile's precision step and a report."""

import pytest
import torch
from torch import nn

from compression import compress
from compression.profiles import DeviceProfile, profile_from_dict

pytestmark = pytest.mark.unit


def test_nothing_to_prune_still_tries_precision_and_reports_why():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256)).eval()  # only the output layer, which keeps width
    settings = {
        "name": "unprunable",
        "quantization": "int8-dynamic",
        "latency_repeats": 3,
        "min_neighbour_recall": None,
        "min_fidelity": 0.9,
        "cpu_bfloat16": False,  # the int8 step alone, whatever this CPU computes natively
    }
    if "runtimes" in DeviceProfile.model_fields:
        settings["runtimes"] = ["torch"]
    x = torch.randn(64, 64)
    v = compress(model, profile_from_dict(settings), example_inputs=x[:4], calibration=[x])
    r = v.report
    assert r.steps[0]["step"] == "prune" and not r.steps[0]["kept"], r.steps
    assert "has no prunable group" in r.steps[0]["detail"], r.steps[0]
    assert [c.precision for c in r.candidates] == ["int8-dynamic"], r.candidates
    assert any(s["step"] == "precision" for s in r.steps)
    assert r.accepted or r.reason.startswith(("cannot prune", "no candidate")), r.reason
    assert v.module(x).shape == (64, 256)


def test_a_cut_that_fails_is_reported_and_the_search_goes_on(monkeypatch):
    from compression.structure import graph

    from .tiny import tiny_mlp

    real = graph.prune
    calls = []

    def flaky(model, example, removed):
        calls.append(1)
        if len(calls) == 2:  # the second amount's cut breaks
            raise RuntimeError("simulated surgery failure")
        return real(model, example, removed)

    monkeypatch.setattr(graph, "prune", flaky)
    settings = {
        "name": "flaky",
        "ratios": [0.25, 0.5],
        "allocation": "uniform",
        "quantization": "none",
        "latency_repeats": 3,
        "min_neighbour_recall": None,
        "min_fidelity": 0.0,
    }
    if "runtimes" in DeviceProfile.model_fields:
        settings["runtimes"] = ["torch"]
    x = torch.randn(64, 12)
    v = compress(tiny_mlp(), profile_from_dict(settings), example_inputs=x[:4], calibration=[x])
    failed = [s for s in v.report.steps if s["detail"].startswith("failed")]
    assert failed and "simulated surgery failure" in failed[0]["detail"], v.report.steps
    assert [c.ratio for c in v.report.candidates] == [0.25], v.report.candidates
