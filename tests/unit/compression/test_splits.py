"""Honest verification: selection and confirmation splits, hold-out without validation data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compression import PROFILES, compress
from compression.search.splits import (
    REFUSED_NOTE,
    claim,
    evaluation,
    holdout,
    interleave,
    measure_with_errors,
    recall_claim,
    shifted,
)

pytestmark = pytest.mark.unit


def test_interleave_gives_disjoint_halves_with_their_labels():
    x = torch.arange(10.0).reshape(10, 1)
    y = torch.arange(10) * 10
    sel, conf = interleave([(x, y), (x[:1], np.array([7]))])
    assert sel[0][0].flatten().tolist() == [0, 2, 4, 6, 8]
    assert conf[0][0].flatten().tolist() == [1, 3, 5, 7, 9]
    assert sel[0][1].tolist() == [0, 20, 40, 60, 80] and conf[0][1].tolist() == [10, 30, 50, 70, 90]
    assert len(sel) == 2 and len(conf) == 1  # a one-sample batch selects only
    tokens = {"input_ids": torch.arange(12).reshape(4, 3), "attention_mask": torch.ones(4, 3)}
    sel, conf = interleave([(tokens, None)])
    assert sel[0][0]["input_ids"][:, 0].tolist() == [0, 6] and conf[0][1] is None


def test_the_claim_is_lowered_by_the_loss_added_over_selection():
    # Lost 0.028 on selection, 0.039 on confirmation: claims another 0.011 off, 0.950.
    assert shifted(1.0, 0.972, 1.0, 0.961) == pytest.approx(0.950)
    # Accuracy: the original scores 0.98 / 0.99; the variant loses 1 point, then 2 points.
    assert shifted(0.98, 0.97, 0.99, 0.97) == pytest.approx(0.96)
    # Lost less on confirmation than on selection: the selection loss is claimed, not the
    # better figure (the confirmation figure is not raised either way).
    assert shifted(1.0, 0.95, 1.0, 0.97) == pytest.approx(0.95)
    assert shifted(0.98, 0.97, 0.99, 0.985) == pytest.approx(0.98)


def test_a_claim_is_a_lower_bound_by_its_standard_error():
    assert claim(1.0, 0.972, 1.0, (0.961, 0.0)) == pytest.approx(0.950)
    assert claim(1.0, 0.972, 1.0, (0.961, 0.002)) == pytest.approx(0.950 - 1.645 * 0.002)
    # The errors measure_with_errors gives are those of the per-sample figures' means.
    torch.manual_seed(0)
    model = nn.Linear(8, 8).eval()
    x = torch.randn(64, 8)
    ev = evaluation(model, [(x, None)], "cosine", 0.01, 0.5, 0.05)
    noisy = nn.Sequential(model, nn.Dropout(0.0))
    with torch.no_grad():
        noisy[0] = nn.Linear(8, 8)
        noisy[0].weight.copy_(model.weight + 0.3 * torch.randn(8, 8))
        noisy[0].bias.copy_(model.bias)
    (value, fidelity, recall), (e_value, e_fid, e_recall) = measure_with_errors(
        noisy.eval(), ev, "cosine", 0.5
    )
    with torch.no_grad():
        rows = nn.functional.cosine_similarity(noisy(x), model(x), dim=1).double()
    assert value == fidelity == pytest.approx(float(rows.mean()), abs=1e-6)
    assert e_value == e_fid == pytest.approx(float(rows.std() / 8), rel=1e-4) and e_fid > 0
    assert recall is not None and 0 < e_recall < 0.1, (recall, e_recall)


def test_the_recall_claim_follows_the_cosine_claim():
    # Confirmation: cosine 0.97 (loss 0.03), recall 0.82 (loss 0.18): 6 x the cosine loss.
    # The cosine claims 0.965 (0.035 lost): recall may claim at most 1 - 6 x 0.035 = 0.79.
    assert recall_claim(0.81, 0.82, 0.97, 0.965) == pytest.approx(0.79)
    # Its own claim stands where it is lower already.
    assert recall_claim(0.75, 0.82, 0.97, 0.965) == pytest.approx(0.75)
    # A cosine claim at its measured figure lowers nothing beyond the own claim.
    assert recall_claim(0.81, 0.82, 0.97, 0.97) == pytest.approx(0.81)
    # No cosine loss to scale by (a lossless variant): the own claim.
    assert recall_claim(0.99, 1.0, 1.0, 0.9995) == 0.99


def test_the_reported_recall_claim_is_the_lower_of_both_rules():
    model, cal, val = _subspace_model()
    profile = PROFILES["cpu"].model_copy(
        update={"min_fidelity": 0.0, "min_neighbour_recall": 0.0, "quantization": "none",
                "runtimes": ["torch"], "ratios": [0.3], "latency_repeats": 3}
    )  # fmt: skip
    r = compress(
        model, profile, example_inputs=cal[:4], calibration=[cal], validation=[(val, None)]
    ).report
    s = r.splits
    conf, measured, errors = (
        s["confirmation"],
        s["confirmation"]["measured"],
        s["confirmation"]["standard_error"],
    )
    own = claim(1.0, s["selection"]["recall"], 1.0, (measured["recall"], errors["recall"]))
    scaled = 1 - (1 - measured["recall"]) / (1 - measured["fidelity"]) * (1 - conf["fidelity"])
    assert scaled < own and conf["recall"] == pytest.approx(scaled, abs=1e-4), (own, scaled, s)
    assert r.neighbour_recall == conf["recall"] < measured["recall"]


def test_holdout_keeps_a_quarter_of_the_calibration_out_of_the_fits():
    fit, held = holdout([torch.randn(40, 3), torch.randn(24, 3)])
    assert (
        sum(b.shape[0] for b in fit) == 48 and sum(b.shape[0] for x in [held] for b, _ in x) == 16
    )
    fit, held = holdout([torch.randn(12, 3)])  # too few to hold any out
    assert held is None and fit[0].shape[0] == 12


def _subspace_model():
    """Calibration in an 8-dim subspace of 32; odd validation samples leave it."""
    torch.manual_seed(0)
    basis = torch.randn(32, 8)

    def inputs(n, wide=False):
        x = torch.randn(n, 8) @ basis.T
        return x + torch.randn(n, 32) if wide else x

    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16)
    ).eval()
    val = torch.empty(128, 32)
    val[0::2], val[1::2] = inputs(64), inputs(64, wide=True)
    return model, inputs(256), val


def test_a_winner_that_does_not_hold_on_confirmation_is_refused():
    model, cal, val = _subspace_model()
    profile = PROFILES["cpu"].model_copy(
        update={
            "min_fidelity": 0.99,
            "quantization": "none",
            "runtimes": ["torch"],
            "ratios": [0.2, 0.4],
            "latency_repeats": 3,
        }
    )
    r = compress(
        model, profile, example_inputs=cal[:4], calibration=[cal], validation=[(val, None)]
    ).report
    sel, conf = r.splits["selection"], r.splits["confirmation"]
    assert sel["samples"] == conf["samples"] == 64
    # Selection passes (0.99), confirmation does not: nothing is accepted, and the report's
    # figures are the confirmation split's.
    assert sel["metric"] >= 0.99 > conf["metric"], r.splits
    assert not r.accepted and "confirmation split" in r.reason, r.reason
    assert r.fidelity == conf["fidelity"] < 0.99
    refused = [c for c in r.candidates if c.note == REFUSED_NOTE]
    assert len(refused) >= 1, r.candidates


@pytest.mark.parametrize("validation", [False, True])
def test_report_figures_come_from_the_confirmation_split(validation):
    model, cal, val = _subspace_model()
    profile = PROFILES["cpu"].model_copy(
        update={"min_fidelity": 0.9, "quantization": "none", "runtimes": ["torch"],
                "ratios": [0.2], "latency_repeats": 3}
    )  # fmt: skip
    kw = {"validation": [(val[0::2], None)]} if validation else {}
    r = compress(model, profile, example_inputs=cal[:4], calibration=[cal], **kw).report
    assert r.accepted, r.reason
    s = r.splits
    # Without validation, a quarter of the 256 calibration samples is held out of the fits.
    assert s["calibration"]["samples"] == (256 if validation else 192), s
    # 64 evaluation samples either way: the 64 given, or the quarter of 256 held out.
    assert s["selection"]["samples"] == s["confirmation"]["samples"] == 32, s
    assert r.metric_after == s["confirmation"]["metric"] and r.budget == 0.9
    # The report claims the shifted figure less 1.645 standard errors: never above what was
    # measured on confirmation.
    conf, measured = s["confirmation"], s["confirmation"]["measured"]
    error = s["confirmation"]["standard_error"]["fidelity"]
    expected = shifted(1.0, s["selection"]["fidelity"], 1.0, measured["fidelity"]) - 1.645 * error
    assert (
        conf["fidelity"] == pytest.approx(expected, abs=1e-5) and expected <= measured["fidelity"]
    )


def test_a_winner_whose_claim_breaks_the_budget_is_refused_though_measured_within_it():
    """Confirmation measures within budget, but lost more there than on selection: refused."""
    model, cal, val = _subspace_model()
    base = {"quantization": "none", "runtimes": ["torch"], "ratios": [0.3], "latency_repeats": 3}
    kw = {"example_inputs": cal[:4], "calibration": [cal], "validation": [(val, None)]}
    probe = compress(model, PROFILES["cpu"].model_copy(update={**base, "min_fidelity": 0.0}), **kw)
    sel = probe.report.splits["selection"]["fidelity"]
    measured = probe.report.splits["confirmation"]["measured"]["fidelity"]
    claim = probe.report.splits["confirmation"]["fidelity"]
    # The odd samples leave the calibration subspace: the variant loses more on them.
    assert sel > measured > claim, probe.report.splits
    budget = round((measured + claim) / 2, 6)  # between the claim and the measured figure
    r = compress(model, PROFILES["cpu"].model_copy(update={**base, "min_fidelity": budget}), **kw)
    assert not r.report.accepted and "claims" in r.report.reason, r.report.reason


def test_the_speed_up_is_timed_in_the_rounds_that_chose_the_winner(monkeypatch):
    """The winner's speed-up comes from the interleaved rounds it was re-timed in beside the
    original, not from a second timing after the choice."""
    from compression.search import verify

    model, cal, val = _subspace_model()
    profile = PROFILES["cpu"].model_copy(
        update={"min_fidelity": 0.0, "min_neighbour_recall": 0.0, "quantization": "none",
                "runtimes": ["torch"], "ratios": [0.1, 0.2], "latency_repeats": 3}
    )  # fmt: skip
    rounds = []
    side_by_side = verify.side_by_side_ms

    def recorded(models, *args):
        rounds.append(len(models))
        return side_by_side(models, *args)

    def no_second_timing(*args, **kwargs):
        raise AssertionError("the winner was timed again after the choice")

    monkeypatch.setattr(verify, "side_by_side_ms", recorded)
    monkeypatch.setattr(verify, "latency_ms", no_second_timing)
    r = compress(
        model, profile, example_inputs=cal[:4], calibration=[cal], validation=[(val, None)]
    ).report
    assert r.accepted, r.reason
    # the original and the contenders (those within 1.5x of the fastest screening: one or more,
    # as the machine's load has it)
    assert rounds and rounds[0] >= 2, rounds
    chosen = next(c for c in r.candidates if c.ratio == r.ratio and c.precision == r.precision)
    assert r.latency_ms_after == chosen.latency_ms
    # The report rounds latencies to 4 decimals of a ms: on a model this small (tens of µs) that
    # alone moves their ratio by a few tenths of a percent, so the tolerance is the rounding's.
    before, after = r.latency_ms_before, r.latency_ms_after
    rounding = (before / after) * (0.5e-4 / after + 0.5e-4 / before) + 0.5e-4
    assert r.speedup == pytest.approx(before / after, abs=rounding + 1e-9)
