"""The search's amount ladder: an amount the last two already rule out is not built."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from compression import PROFILES, compress
from compression.report import Candidate
from compression.search import Built, predicted_miss


def _built(ratio: float, metric: float, recall: float | None = None) -> Built:
    c = Candidate(ratio, "global", "float32", 1, 1, 1.0, metric, metric, True, recall=recall)
    return Built(nn.Identity(), nn.Identity(), c)


def _ctx(metric="cosine", budget=0.95, floor=None):
    profile = SimpleNamespace(min_neighbour_recall=floor)
    return SimpleNamespace(metric=metric, budget=budget, profile=profile)


def test_an_amount_the_line_through_the_last_two_puts_under_budget_is_not_built():
    built = [_built(0.2, 0.979), _built(0.3, 0.963)]
    # 0.963 - 0.016 = 0.947 at 40 %: under 0.95.
    why = predicted_miss(_ctx(), built, 0.4)
    assert why is not None and "0.9470 < budget 0.9500" in why, why
    assert predicted_miss(_ctx(budget=0.94), built, 0.4) is None  # 0.947 >= 0.94: built
    # The recall floor is extrapolated the same way: 0.857 -> 0.806 -> 0.755 < 0.8.
    built = [_built(0.2, 0.99, 0.857), _built(0.3, 0.985, 0.806)]
    why = predicted_miss(_ctx(floor=0.8), built, 0.4)
    assert why is not None and "recall extrapolates to 0.7550" in why, why


def test_accuracy_and_a_single_amount_are_never_extrapolated():
    built = [_built(0.2, 0.99), _built(0.3, 0.90)]
    assert predicted_miss(_ctx(metric="accuracy", budget=0.98), built, 0.4) is None
    assert predicted_miss(_ctx(), built[:1], 0.4) is None


def test_the_report_lists_the_amount_it_skipped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(256, 16)
    profile = PROFILES["cpu"].model_copy(
        update={"quantization": "none", "runtimes": ["torch"], "allocation": "uniform",
                "ratios": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "min_fidelity": 0.98,
                "min_neighbour_recall": None, "latency_repeats": 3}
    )  # fmt: skip
    r = compress(model, profile, example_inputs=x[:4], calibration=[x]).report
    built = {c.ratio: c for c in r.candidates if c.precision == "float32" and c.ratio > 0}
    # 10-40 % are built and within budget (40 %: cosine 0.981); 30 % -> 40 % lost 0.009, so
    # 50 % extrapolates under 0.98 and is not built.
    assert sorted(built) == [0.1, 0.2, 0.3, 0.4] and built[0.4].within_budget, built
    (why,) = [s["detail"] for s in r.steps if s["detail"].startswith("skipped")]
    assert why.startswith("skipped uniform 50%: not built: cosine extrapolates to"), why


def _profile(**update):
    base = {"quantization": "none", "runtimes": ["torch"], "min_neighbour_recall": None,
            "latency_repeats": 3, "min_fidelity": 0.5}  # fmt: skip
    return PROFILES["cpu"].model_copy(update={**base, **update})


def test_the_split_whose_cut_loses_less_is_the_only_one_rebuilt():
    torch.manual_seed(0)
    # Two hidden layers of unequal importance (the second's outputs are scaled down 20x), so a
    # global split cuts mostly there and a uniform one cuts both alike.
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 8)).eval()  # fmt: skip
    with torch.no_grad():
        model[2].weight.mul_(0.05)
    x = torch.randn(512, 16)
    kw = {"example_inputs": x[:4], "calibration": [x]}
    r = compress(model, _profile(allocation="search", ratios=[0.4]), **kw).report
    floats = [c for c in r.candidates if c.precision == "float32" and c.ratio > 0]
    assert len(floats) == 1, floats  # one rebuild at the first amount, not two
    (why,) = [s["detail"] for s in r.steps if s["detail"].startswith("skipped")]
    other = "uniform" if floats[0].allocation == "global" else "global"
    assert why.startswith(f"skipped {other} 40%: not built: its cut's calibration error"), why
    lost = float(why.split("calibration error ")[1].split(" ")[0])
    kept = float(why.split(f"> {floats[0].allocation}'s ")[1].split(" ")[0])
    assert lost > kept, why
    # What the cut predicted holds after the full rebuild: the split left out, built alone,
    # keeps no more fidelity than the one chosen.
    alone = compress(model, _profile(allocation=other, ratios=[0.4]), **kw).report
    (theirs,) = [c for c in alone.candidates if c.precision == "float32" and c.ratio > 0]
    assert theirs.fidelity <= floats[0].fidelity + 1e-4, (theirs.fidelity, floats[0].fidelity)


def test_a_model_with_batchnorm_has_both_splits_rebuilt(digits_cnn_bundle):
    # Its cut's error does not predict the rebuilt fidelity (see search.split_by_cut).
    b = digits_cnn_bundle
    r = b.compress(_profile(ratios=[0.2], min_fidelity=0.0)).report
    firsts = {c.allocation for c in r.candidates if c.precision == "float32" and c.ratio == 0.2}
    assert firsts == {"uniform", "global"}, r.candidates
    assert not [s for s in r.steps if s["detail"].startswith("skipped")], r.steps
