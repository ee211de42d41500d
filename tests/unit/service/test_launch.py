"""service.launch without starting servers: metrics text parsing, ports, argument checks."""

from __future__ import annotations

import pytest

from service.launch import TritonServer, free_ports, metric_samples, metric_value

pytestmark = pytest.mark.unit

METRICS = """\
# HELP slimserve_swaps_total Variant swaps.
# TYPE slimserve_swaps_total counter
slimserve_swaps_total{model="digits-cnn",reason="compression"} 2.0
slimserve_swaps_total{model="digits-cnn",reason="canary"} 1.0
slimserve_swaps_total{model="minilm",reason="compression"} 5.0
# HELP slimserve_inference_latency_seconds Latency.
# TYPE slimserve_inference_latency_seconds histogram
slimserve_inference_latency_seconds_bucket{le="0.01",model="digits-cnn"} 3.0
slimserve_inference_latency_seconds_bucket{le="+Inf",model="digits-cnn"} 4.0
slimserve_inference_latency_seconds_count{model="digits-cnn"} 4.0
slimserve_inference_latency_seconds_sum{model="digits-cnn"} 0.05
# HELP slimserve_note A label with an escaped quote and a space.
# TYPE slimserve_note gauge
slimserve_note{text="a \\"b\\" c"} 7.0
"""


def test_metric_value_sums_the_matching_samples():
    assert metric_value(METRICS, "slimserve_swaps_total", model="digits-cnn") == 3.0
    assert metric_value(METRICS, "slimserve_swaps_total", reason="compression") == 7.0
    assert metric_value(METRICS, "slimserve_swaps_total", model="none") == 0.0
    count = metric_value(METRICS, "slimserve_inference_latency_seconds_count", model="digits-cnn")
    assert count == 4.0
    # The family name alone is no sample of a histogram.
    assert metric_value(METRICS, "slimserve_inference_latency_seconds") == 0.0
    assert metric_samples(METRICS, "slimserve_note") == [({"text": 'a "b" c'}, 7.0)]


def test_free_ports_are_distinct():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(1024 <= p < 65536 for p in ports), ports


def test_triton_server_takes_a_repo_or_a_variant(tmp_path):
    with pytest.raises(ValueError, match="exactly one of repo="):
        TritonServer(tmp_path / "t.log")
    with pytest.raises(ValueError, match="exactly one of repo="):
        TritonServer(tmp_path / "t.log", repo=tmp_path, variant=tmp_path)
