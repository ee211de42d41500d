"""The search's amount ladder: an amount the last two already rule out is not built."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from compression import PROFILES, compress
from compression.core.candidate import Candidate
from compression.search.context import Built
from compression.search.ladder import backoff, predicted_miss, predicted_refusal
from compression.search.splits import REFUSED_NOTE

pytestmark = pytest.mark.unit


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
                "ratios": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "min_fidelity": 0.975,
                "min_neighbour_recall": None, "latency_repeats": 3}
    )  # fmt: skip
    r = compress(model, profile, example_inputs=x[:4], calibration=[x]).report
    built = {c.ratio: c for c in r.candidates if c.precision == "float32" and c.ratio > 0}
    # 10-40 % are built and within budget (40 %: cosine 0.981, claiming 0.978); 30 % -> 40 %
    # lost 0.009, so 50 % extrapolates to 0.972 < 0.975 and is not built.
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
    # Its cut's error does not predict the rebuilt fidelity (see layer_split.split_by_cut).
    b = digits_cnn_bundle
    r = b.compress(_profile(ratios=[0.2], min_fidelity=0.0)).report
    firsts = {c.allocation for c in r.candidates if c.precision == "float32" and c.ratio == 0.2}
    assert firsts == {"uniform", "global"}, r.candidates
    assert not [s for s in r.steps if s["detail"].startswith("skipped")], r.steps


def _claimed(ratio: float, metric: float, claim: float, recall: float | None = None) -> Built:
    b = _built(ratio, metric)
    b.confirmed = {"metric": claim, "fidelity": claim, "recall": recall}
    return b


def _ctx_with_confirmation(budget=0.95, floor=None, metric="cosine"):
    ctx = _ctx(metric=metric, budget=budget, floor=floor)
    ctx.confirmation = SimpleNamespace(metric_before=1.0, budget=budget)
    return ctx


def test_an_amount_whose_claim_extrapolates_under_budget_is_not_built():
    # MiniLM's figures: 20 % is within 0.95 on selection (0.979) and claims 0.9565 on the
    # confirmation split; the line from 1.0 at 0 % ends at 0.9348 at 30 % (its claim: 0.925).
    built = [_claimed(0.2, 0.979, 0.9565)]
    why = predicted_refusal(_ctx_with_confirmation(), built, 0.3)
    assert why is not None and "extrapolates to 0.9348 < budget 0.9500" in why, why
    assert "from 1.0000 at 0% and 0.9565 at 20%" in why, why
    # Within the noise allowance under the budget (0.9348 >= 0.938 - 0.005): built.
    assert predicted_refusal(_ctx_with_confirmation(budget=0.938), built, 0.3) is None
    # Two claimed amounts: the line through them; recall from two amounts only.
    built = [_claimed(0.2, 0.99, 0.98, 0.86), _claimed(0.3, 0.985, 0.975, 0.82)]
    why = predicted_refusal(_ctx_with_confirmation(budget=0.9, floor=0.8), built, 0.4)
    assert (
        why is not None and "recall claim on the confirmation split extrapolates to 0.7800" in why
    )
    assert predicted_refusal(_ctx_with_confirmation(floor=0.8), built[:1], 0.3) is None
    # Unconfirmed amounts, accuracy, or no confirmation split: nothing is extrapolated.
    assert predicted_refusal(_ctx_with_confirmation(), [_built(0.2, 0.979)], 0.3) is None
    acc = _ctx_with_confirmation(metric="accuracy", budget=0.98)
    assert predicted_refusal(acc, [_claimed(0.2, 0.99, 0.9)], 0.3) is None
    no_split = _ctx()
    no_split.confirmation = None
    assert predicted_refusal(no_split, [_claimed(0.2, 0.979, 0.9)], 0.3) is None


def test_a_recall_claim_from_one_amount_extrapolates_by_the_root_of_the_amount():
    # MiniLM, global: 10 % claims cosine 0.9826 and recall 0.8453 on the confirmation split;
    # 20 % claimed 0.7654. The root rule: 1 - 0.1547 * sqrt(2) = 0.7812 < 0.8 - 0.005.
    built = [_claimed(0.1, 0.99, 0.9826, 0.8453)]
    why = predicted_refusal(_ctx_with_confirmation(floor=0.8), built, 0.2)
    assert (
        why is not None and "recall claim on the confirmation split extrapolates to 0.7812" in why
    )
    assert "from 1.0000 (the root) at 0%" in why, why
    # It is an upper bound: the root of a loss 0.143 at 20 % (recall 0.857) puts 30 % at
    # 0.8249, above the floor, where a line from the origin would say 0.7855 (30 % gave 0.806).
    assert (
        predicted_refusal(
            _ctx_with_confirmation(floor=0.8), [_claimed(0.2, 0.99, 0.98, 0.857)], 0.3
        )
        is None
    )


def test_the_search_backs_off_to_where_the_line_from_the_original_crosses_the_budget():
    ctx = _ctx_with_confirmation(budget=0.95)
    ctx.profile.ratios = [0.2, 0.3]
    ctx.selection = SimpleNamespace(metric_before=1.0)
    # 20 % lost 0.06 on selection; the line from 1.0 reaches 0.95 at 16.7 %: 16 % is tried.
    amount, why = backoff(ctx, [_built(0.2, 0.94)])
    assert amount == 0.16 and "crosses the budget at 16%" in why, why
    # Within on selection, refused on its claim (0.90): the claim's line, 10 %.
    assert backoff(ctx, [_claimed(0.2, 0.97, 0.90)])[0] == 0.1
    # Accuracy moves in steps: half the amount.
    acc = _ctx_with_confirmation(metric="accuracy", budget=0.95)
    acc.profile.ratios = [0.2, 0.3]
    assert backoff(acc, [_built(0.2, 0.5)]) == (0.1, "half of 20%")


def test_a_skipped_amount_is_refused_when_built_alone():
    # The confirmation split (odd samples) is another source than the calibration and the
    # selection split, so the claims run out before the selection figures do.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(512, 16)
    v = torch.randn(256, 16)
    v[1::2] = v[1::2] * 1.5 + 0.5
    kw = {"example_inputs": x[:4], "calibration": [x],
          "validation": [(v[i : i + 64], None) for i in range(0, 256, 64)]}  # fmt: skip
    profile = _profile(allocation="uniform", min_fidelity=0.985)
    r = compress(model, profile.model_copy(update={"ratios": [0.2, 0.4]}), **kw).report
    assert r.accepted and r.ratio == 0.2, (r.ratio, r.reason)
    (why,) = [s["detail"] for s in r.steps if s["detail"].startswith("skipped")]
    assert why.startswith("skipped uniform 40%: not built: its cosine claim"), why
    predicted = float(why.split("extrapolates to ")[1].split(" ")[0])
    assert predicted < 0.985 - 0.005, why
    alone = compress(model, profile.model_copy(update={"ratios": [0.4]}), **kw).report
    (built,) = [c for c in alone.candidates if c.ratio == 0.4 and c.precision == "float32"]
    # Built alone it misses the budget (on selection or on its claim), as predicted.
    assert not built.within_budget or built.note == REFUSED_NOTE, built
    assert alone.ratio < 0.4, (alone.ratio, alone.reason)
