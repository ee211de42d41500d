"""int8 activation smoothing: exact in float, less int8 error where inputs have outlier
channels, chosen by calibration error, and saved with its variant under a checksum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compression.core.errors import VariantError
from compression.forms import precision, smoothing

pytestmark = pytest.mark.unit


def _outlier_mlp() -> tuple[nn.Module, torch.Tensor]:
    """An MLP whose input has one channel 60x larger than the others (what transformer
    LayerNorm outputs look like to the next Linear layer)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(256, 32)
    x[:, 3] *= 60
    return model, x


def _error(module: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> float:
    with torch.inference_mode():
        out = module(x)
    return float((out - reference).pow(2).sum() / reference.pow(2).sum())


def test_smoothing_cuts_int8_error_on_an_outlier_channel():
    model, x = _outlier_mlp()
    calib, test = x[:128], x[128:]
    with torch.inference_mode():
        reference = model(test)
    ranges = smoothing.input_ranges(model, [calib])
    assert set(ranges) == {"0", "2"} and ranges["0"].shape == (32,)
    assert float(ranges["0"][3]) > 20 * float(ranges["0"].median())  # the outlier was seen
    plain = _error(precision.quantize_int8(model), test, reference)
    smoothed = _error(
        precision.quantize_int8(model, smoothing.scales(model, ranges, 0.8)), test, reference
    )
    assert smoothed < plain / 3, f"int8 relative error {plain:.2e} plain, {smoothed:.2e} smoothed"


def test_the_reparametrisation_is_exact_in_float():
    model, x = _outlier_mlp()
    ranges = smoothing.input_ranges(model, [x[:64]])
    s = smoothing.scales(model, ranges, 0.8)["0"]
    layer = model[0]
    with torch.inference_mode():
        direct = layer(x)
        smoothed = nn.functional.linear(x / s, layer.weight * s[None, :], layer.bias)
    assert float((direct - smoothed).abs().max()) < 1e-4


def test_choose_alpha_takes_the_least_error_and_plain_int8_on_a_tie():
    errors = {None: 0.05, 0.5: 0.2, 0.8: 0.01, 0.9: 0.02}
    best, seen = smoothing.choose_alpha(errors.__getitem__, tuple(errors))
    assert best == 0.8 and seen == errors
    assert smoothing.choose_alpha(lambda a: 0.1, (None, 0.5))[0] is None


def test_smoothed_layers_read_like_linear_layers():
    model, x = _outlier_mlp()
    q = precision.quantize_int8(
        model, smoothing.scales(model, smoothing.input_ranges(model, [x]), 0.8)
    )
    assert isinstance(q[0], smoothing.SmoothedLinear)
    assert (q[0].in_features, q[0].out_features) == (32, 64)  # what head-sizing code reads
    assert precision.is_quantized(q)
    assert set(smoothing.scales_of(q)) == {"0", "2"}


def test_a_smoothed_int8_variant_saves_and_reloads_bit_for_bit(tmp_path):
    from compression import compress, load_variant
    from compression.profiles import profile_from_dict

    model, x = _outlier_mlp()
    profile = profile_from_dict(
        {"name": "unit", "ratios": [0.25], "allocation": "uniform", "latency_repeats": 3,
         "min_fidelity": 0.0, "min_neighbour_recall": None, "runtimes": ["torch"]}
    )  # fmt: skip
    v = compress(model, profile, example_inputs=x[:8], calibration=[x[:128]],
                 validation=[(x[128:], None)])  # fmt: skip
    # Whether int8 won depends on this machine's speed: save the smoothed int8 form either way.
    scales = smoothing.scales(
        v.float_module, smoothing.input_ranges(v.float_module, [x[:128]]), 0.8
    )
    v.module = precision.quantize_int8(v.float_module, scales).eval()
    v.plan.update(dtype="float32", quantization="int8-dynamic", packed=False)
    v.smoothing = scales
    v.save(tmp_path / "v")
    again = load_variant(tmp_path / "v", model=_outlier_mlp()[0])
    with torch.inference_mode():
        assert torch.equal(again.module(x), v.module(x))
    path = tmp_path / "v" / "smoothing.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VariantError, match="smoothing.safetensors: checksum"):
        load_variant(tmp_path / "v", model=_outlier_mlp()[0])
    path.unlink()
    with pytest.raises(VariantError, match="smoothing.safetensors is missing"):
        load_variant(tmp_path / "v", model=_outlier_mlp()[0])


def test_layers_reading_one_input_share_a_scale_and_fuse_exactly():
    torch.manual_seed(0)

    class Fan(nn.Module):  # three layers on one input, like attention's query, key and value
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(16, 8), nn.Linear(16, 8), nn.Linear(16, 4)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x), self.c(x)], -1)

    model = Fan().eval()
    x = torch.randn(64, 16)
    x[:, 2] *= 40
    scales = smoothing.scales(model, smoothing.input_ranges(model, [x]), 0.8)
    assert torch.equal(scales["a"], scales["b"]) and torch.equal(scales["a"], scales["c"])
    assert scales["a"] is not scales["b"]  # separate tensors: safetensors refuses shared ones
    int8 = precision.quantize_int8(model, scales)
    fused = precision.fused_int8([int8.a, int8.b, int8.c])
    assert isinstance(fused, smoothing.SmoothedLinear) and fused.out_features == 20
    with torch.inference_mode():
        assert float((fused(x) - int8(x)).abs().max()) < 1e-5
    # unequal scales, or smoothed beside plain, cannot share one smoothed input
    other = smoothing.scales(model, smoothing.input_ranges(model, [x * 2]), 0.5)
    mixed = precision.quantize_int8(model, {"a": scales["a"], "b": other["b"]})
    assert precision.fused_int8([mixed.a, mixed.b]) is None
    assert precision.fused_int8([mixed.a, mixed.c]) is None


def test_the_precision_step_keeps_the_scales_its_int8_module_runs_with():
    # A variant saves Built.smoothing; a module smoothed without it reloads as plain int8 (the
    # served MiniLM lost 0.015 of cosine that way while its report claimed the smoothed one).
    import time

    from compression import pipeline
    from compression.profiles import profile_from_dict
    from compression.search import context as search
    from compression.search.precision_step import with_precision

    model, x = _outlier_mlp()
    profile = profile_from_dict(
        {"name": "unit", "quantization": "int8-dynamic", "smoothing": True, "latency_repeats": 3,
         "min_fidelity": 0.0, "min_neighbour_recall": None, "runtimes": ["torch"]}
    )  # fmt: skip
    ctx = pipeline.prepare(
        model, profile, x[:8], [x[:128]], [(x[128:], None)], "auto",
        lambda *a: None, lambda: False, time.monotonic() + 600,
    )  # fmt: skip
    int8 = [b for b in with_precision(ctx, search.baseline(ctx)) if "int8" in b.candidate.precision]
    assert int8
    for built in int8:
        running = smoothing.scales_of(built.module)
        assert running, "the outlier channel is smoothed"
        assert built.smoothing is not None and built.pool_agreement is None
        assert set(running) == set(built.smoothing)
        assert all(torch.allclose(running[k], built.smoothing[k]) for k in running)
