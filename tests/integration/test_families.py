"""Ten Hugging Face families compress with zero per-model configuration.

Tiny configurations built here from ``transformers`` config classes, random weights, no download
(:mod:`tests.integration.hf_tiny`). The profile only makes the run short and deterministic: one
amount (half of every unit), no precision step, a budget any candidate meets (random weights
have no accuracy to keep; the fidelity is printed in the messages, the test pins the mechanics).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compression import compress
from compression.core.inputs import call, main_output
from compression.profiles import DeviceProfile, profile_from_dict
from compression.structure.attention import find_layouts

from .hf_tiny import FAMILIES, build

pytestmark = pytest.mark.integration

SETTINGS = {
    "name": "families",
    "ratios": [0.5],
    "allocation": "uniform",
    "quantization": "none",
    "latency_repeats": 3,
    "max_drop": 1.0,
    "min_fidelity": -1.0,  # the claim is a lower bound: on 4 confirmation samples it can be < 0
    "min_neighbour_recall": None,
    "max_perplexity_increase": 100.0,  # causal LMs verify by perplexity ratio (random weights)
    "calibration_size": 32,
}
if "runtimes" in DeviceProfile.model_fields:  # torch only: the test pins pruning, not export
    SETTINGS["runtimes"] = ["torch"]
PROFILE = profile_from_dict(SETTINGS)
# Families whose attention has heads to cut.
HEADS = {"bert", "roberta", "distilbert", "vit", "gpt2", "llama", "swin"}
SLOW = {"mobilenet_v2"}  # 17 inverted-residual blocks: most time of the ten


def _heads(model: torch.nn.Module) -> dict[str, tuple[int, int, int, int]]:
    """Per attention module: (query heads, kv heads, head size, query width of its weights)."""
    out = {}
    for name, layout in find_layouts(model).items():
        attn = model.get_submodule(name)
        q = attn.get_submodule(layout.qkv or layout.q)
        width = (q.weight.shape[1] // 3) if layout.qkv else q.weight.shape[0]
        out[name] = (layout.heads, layout.kv_heads, layout.head_dim, width)
    return out


def _reload_in_fresh_process(family: str, directory: Path, x, expected: torch.Tensor) -> str:
    save_file({"expected": expected.contiguous()}, directory / "expected.safetensors")
    torch.save(x, directory / "inputs.pt")
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from safetensors.torch import load_file
from compression import load_variant
from compression.core.inputs import call, main_output
from hf_tiny import build
model, _ = build({family!r})
v = load_variant({str(directory)!r}, model=model)
x = torch.load({str(directory / "inputs.pt")!r})
with torch.inference_mode():
    out = main_output(call(v.module, x))
diff = (out - load_file({str(directory / "expected.safetensors")!r})["expected"]).abs().max()
print(float(diff))
sys.exit(0 if float(diff) == 0.0 else 1)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FAMILIES]
)
def test_family_compresses_with_zero_configuration(family, tmp_path):
    model, batch = build(family)
    x = batch(4, seed=2)
    with torch.inference_mode():
        before = main_output(call(model, x))
    heads_before = _heads(model)

    variant = compress(model, PROFILE, example_inputs=batch(2), calibration=[batch(32, seed=1)])
    r = variant.report
    assert r.accepted, r.reason
    with torch.inference_mode():
        after = main_output(call(variant.module, x))
    assert after.shape == before.shape, (after.shape, before.shape)
    assert r.macs_reduction >= 1.3, f"{family}: MACs only {r.macs_reduction:.2f}x fewer"

    heads_after = _heads(variant.float_module)
    assert heads_after.keys() == heads_before.keys()
    for name, (heads, kv, d, width) in heads_after.items():
        assert width == heads * d, f"{name}: query width {width} is not {heads} heads of {d}"
        assert heads % kv == 0 and heads_before[name][2] == d, (name, heads_after[name])
    if family in HEADS:
        cut = [n for n, h in heads_after.items() if h[0] < heads_before[n][0]]
        assert cut, f"{family}: no head was cut: {heads_after}"
    if family in ("gpt2", "llama"):  # causal LMs: next-token perplexity ratio to the original
        assert r.metric == "perplexity" and r.metric_before == 1.0, (r.metric, r.metric_before)
        assert 0.0 < r.metric_after <= 1.5, r.metric_after
    steps = {s["step"] for s in r.steps}
    assert {"prune", "bn", "bias", "refit", "verify"} <= steps, r.steps

    variant.save(tmp_path / "v")
    diff = _reload_in_fresh_process(family, tmp_path / "v", x, after)
    assert float(diff) == 0.0, (
        f"{family}: reloaded outputs differ by {diff} (fidelity {r.fidelity})"
    )
