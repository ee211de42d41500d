"""Samples of a server's ``/metrics`` text, read with ``prometheus_client``'s parser."""

from __future__ import annotations


def metric_samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of each sample called ``name`` whose labels include ``labels``, from
    Prometheus text (a server's ``/metrics``) parsed by ``prometheus_client``'s parser.

    ``name`` is the sample's own name: ``slimserve_swaps_total``,
    ``slimserve_inference_latency_seconds_count``, ``..._bucket``.
    """
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0.0 when none)."""
    return float(sum(value for _, value in metric_samples(text, name, **labels)))
