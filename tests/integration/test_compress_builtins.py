"""The engine end to end on the real built-in models and their real data."""

import subprocess
import sys

import pytest
import torch

from compression import compress
from compression.profiles import PROFILES
from service.models import load

pytestmark = pytest.mark.integration


def test_digits_cnn_cpu_three_times_fewer_macs_within_one_point(digits_cnn_bundle, tmp_path):
    b = digits_cnn_bundle
    model = b.factory()
    variant = compress(
        model,
        "cpu",
        example_inputs=b.example_inputs,
        calibration=b.calibration,
        validation=b.validation,
        source=b.source,
    )
    r = variant.report
    assert r.accepted, r.reason
    assert r.macs_reduction >= 3.0, f"MACs reduced only {r.macs_reduction:.2f}x"
    assert r.metric == "accuracy"
    assert r.metric_before - r.metric_after <= 0.01, (r.metric_before, r.metric_after)
    x = b.validation[0][0]
    assert variant.module(x).shape == model(x).shape == (len(x), 10)
    assert any(s["step"] == "refit" and s["kept"] for s in r.steps), r.steps
    # Labelled: macro precision, recall and F1 beside accuracy, before and after.
    after = r.task_metrics["after"]
    assert set(after) == {"accuracy", "macro_f1", "precision", "recall"}, after
    # task_metrics are measured on the confirmation split; metric_after is the claim there,
    # never above the measured figure (compression.search.splits.shifted).
    measured = r.splits["confirmation"]["measured"]["metric"]
    assert abs(after["accuracy"] - measured) < 1e-6 and after["macro_f1"] >= 0.95, after
    assert r.metric_after <= measured, (r.metric_after, measured)

    # Saved, then loaded from its recorded source alone: identical outputs.
    variant.save(tmp_path / "v")
    again = load(tmp_path / "v")
    with torch.inference_mode():
        assert torch.equal(again.module(x), variant.module(x))


@pytest.mark.slow
def test_minilm_cpu_keeps_cosine_fidelity(minilm_bundle, minilm_cut_variant, tmp_path):
    """All-MiniLM-L6-v2, no fine-tuning: held-out cosine fidelity >= 0.95 with MACs cut.

    The variant is the session's ``minilm_cut_variant`` (tests/conftest.py): a narrowed copy of
    the cpu profile (its first amount, 10 %, one allocation, 128 calibration sentences) verified
    against the profile's budgets on every held-out sentence; test_live_recall serves the same
    variant. Pruning and the rebuild on a BERT: int8 is the precision step's business, tested
    apart; torch runtime, since the module is read as a transformers model below; packed tokens
    off, since the unpruned original on packed tokens ties a light cut on latency (and then wins
    on fidelity). The full search runs in benchmarks/.
    """
    b = minilm_bundle
    variant = minilm_cut_variant
    r = variant.report
    assert r.accepted, r.reason
    assert r.metric == "cosine" and r.fidelity >= 0.95, r.fidelity
    assert r.neighbour_recall is not None and r.neighbour_recall >= 0.8, r.neighbour_recall
    assert r.macs_after < r.macs_before and r.params_after < r.params_before
    attn = [m for m in variant.module.modules() if hasattr(m, "num_attention_heads")]
    assert sum(a.num_attention_heads for a in attn) <= 6 * 12
    inputs = b.validation[0][0]
    out = variant.module(**inputs).last_hidden_state
    assert out.shape[-1] == 384  # hidden size kept: the embedding keeps its meaning and width

    variant.save(tmp_path / "v")
    from safetensors.torch import save_file

    save_file({"y": out.detach().contiguous()}, tmp_path / "y.safetensors")
    save_file({k: v for k, v in inputs.items()}, tmp_path / "x.safetensors")
    script = f"""
import sys, torch
torch.set_num_threads({torch.get_num_threads()})  # the test's: another count sums in another order
from safetensors.torch import load_file
from service.models import load
x = load_file({str(tmp_path / "x.safetensors")!r}); y = load_file({str(tmp_path / "y.safetensors")!r})['y']
v = load({str(tmp_path / "v")!r})
with torch.inference_mode():
    out = v.module(**x).last_hidden_state
sys.exit(0 if torch.equal(out, y) else 1)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_neighbour_recall_floor_rejects_variants_that_fold_the_embedding_space():
    """Cosine fidelity alone can pass a variant whose nearest neighbours changed."""
    from service.models.sources import resolve

    b = resolve("digits-mlp")
    unlabelled = [(x, None) for x, _ in b.validation]
    # Without labels a classifier's scores are read by their top class (top1); the embedding
    # reading, cosine with its neighbour recall, is named here.
    kw = dict(
        example_inputs=b.example_inputs,
        calibration=b.calibration,
        validation=unlabelled,
        metric="cosine",
    )
    # Pruned torch modules only: an ONNX Runtime copy of the unpruned model (recall 1.0) would
    # otherwise be a faster variant that passes the floor.
    base = {
        "min_fidelity": 0.0,
        "ratios": [0.5, 0.7],
        "quantization": "none",
        "runtimes": ["torch"],
    }
    strict = PROFILES["cpu"].model_copy(update={**base, "min_neighbour_recall": 1.0})
    r = compress(b.factory(), strict, **kw).report
    assert not r.accepted and "nearest neighbours" in r.reason, r.reason
    assert all(c.recall is not None and c.recall < 1.0 for c in r.candidates if c.ratio)

    lenient = PROFILES["cpu"].model_copy(update={**base, "min_neighbour_recall": None})
    r = compress(b.factory(), lenient, **kw).report
    assert r.accepted and r.neighbour_recall is None, r.reason
