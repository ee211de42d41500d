"""Ten Hugging Face families compress with zero per-model configuration.

Tiny configurations built here from ``transformers`` config classes, random weights, no download
(:mod:`tests.integration.hf_tiny`). The profile only makes the run short and deterministic: one
amount (half of every unit), no precision step, a budget any candidate meets (random weights
have no accuracy to keep; the fidelity is printed in the messages, the test pins the mechanics).
"""

from __future__ import annotations

import json
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
    "cpu_bfloat16": False,  # the cut is the one candidate: an unpruned copy never races it
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


# Reloads each variant in another interpreter than this one, from its files alone: one process
# for the module (starting one imports torch, transformers and the engine, seconds on 2 cores,
# more than a tiny family's reload), which never holds a test's models, only what it reads back.
RELOADER = """
import json, sys, traceback
import torch
torch.set_num_threads({threads})  # the test's: another count sums in another order
sys.path.insert(0, {here!r})
from safetensors.torch import load_file
from compression import load_variant
from compression.core.inputs import call, main_output
from hf_tiny import build
for line in sys.stdin:
    family, directory = json.loads(line)
    try:
        model, _ = build(family)
        v = load_variant(directory, model=model)
        x = torch.load(directory + "/inputs.pt")
        with torch.inference_mode():
            out = main_output(call(v.module, x))
        diff = (out - load_file(directory + "/expected.safetensors")["expected"]).abs().max()
        answer = {{"diff": float(diff)}}
    except Exception:
        answer = {{"error": traceback.format_exc()}}
    print("RELOADED " + json.dumps(answer), flush=True)
"""


@pytest.fixture(scope="module")
def reload_in_fresh_process(tmp_path_factory):
    """``reload(family, directory, x, expected)``: the largest absolute difference between the
    variant in ``directory`` reloaded in the other process and ``expected`` (its outputs here)."""
    log = tmp_path_factory.mktemp("reloader") / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", RELOADER.format(here=str(Path(__file__).parent), threads=torch.get_num_threads())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip

    def reload(family: str, directory: Path, x, expected: torch.Tensor) -> float:
        save_file({"expected": expected.contiguous()}, directory / "expected.safetensors")
        torch.save(x, directory / "inputs.pt")
        proc.stdin.write(json.dumps([family, str(directory)]) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:  # a library may print lines of its own before the answer
            if line.startswith("RELOADED "):
                answer = json.loads(line.removeprefix("RELOADED "))
                assert "error" not in answer, answer["error"][-3000:]
                return answer["diff"]
        raise AssertionError(f"the reloading process exited: {log.read_text()[-3000:]}")

    yield reload
    proc.stdin.close()
    proc.wait(60)


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FAMILIES]
)
def test_family_compresses_with_zero_configuration(family, tmp_path, reload_in_fresh_process):
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
    diff = reload_in_fresh_process(family, tmp_path / "v", x, after)
    assert diff == 0.0, f"{family}: reloaded outputs differ by {diff} (fidelity {r.fidelity})"
