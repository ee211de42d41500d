"""Every Prometheus series SlimServe exports, in one place (dashboards and alerts read them).

BentoML serves ``prometheus_client``'s multiprocess registry on ``/metrics``; series are created
lazily, on first use inside a worker, after BentoML has set ``PROMETHEUS_MULTIPROC_DIR``. Labels
are bounded: model names, variant ids and profiles from the registry, and a status class.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

MODEL_GAUGE = {"multiprocess_mode": "mostrecent"}  # a model's figures: the last value written
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@lru_cache(maxsize=1)
def series() -> SimpleNamespace:
    """The metric objects (created once per process)."""
    # prometheus_client picks its multiprocess value class when imported: after BentoML sets
    # PROMETHEUS_MULTIPROC_DIR, so here rather than at the top.
    import prometheus_client as prom

    return SimpleNamespace(
        **_request_series(prom), **_variant_series(prom), **_job_series(prom), **_live_series(prom)
    )


def _request_series(prom) -> dict:
    """Requests: latency, outcomes and how many are in flight."""
    return dict(
        latency=prom.Histogram(
            "slimserve_inference_latency_seconds",
            "Time from request decoded to response ready, by served variant.",
            ["model", "variant", "profile"],
            buckets=LATENCY_BUCKETS,
        ),
        requests=prom.Counter(
            "slimserve_inference_requests_total",
            "Inference requests by outcome (ok, client_error, overloaded, error).",
            ["model", "variant", "status"],
        ),
        inflight=prom.Gauge(
            "slimserve_inflight_requests",
            "Requests being served now (the HPA's scaling signal).",
            ["model"],
            multiprocess_mode="livesum",
        ),
    )


def _variant_series(prom) -> dict:
    """Models and their variants: verified figures, size, which one serves, swaps, refusals."""
    return dict(
        accuracy=prom.Gauge(
            "slimserve_model_accuracy",
            "Verified metric of a variant (accuracy, f1 or cosine fidelity).",
            ["model", "variant", "metric"],
            **MODEL_GAUGE,
        ),
        budget=prom.Gauge(
            "slimserve_accuracy_budget",
            "Lowest acceptable value of the verified metric.",
            ["model", "variant", "metric"],
            **MODEL_GAUGE,
        ),
        speedup=prom.Gauge(
            "slimserve_model_speedup",
            "Measured speed-up over the original.",
            ["model", "variant"],
            **MODEL_GAUGE,
        ),
        params=prom.Gauge(
            "slimserve_model_params", "Parameters.", ["model", "variant"], **MODEL_GAUGE
        ),
        macs=prom.Gauge(
            "slimserve_model_macs",
            "MACs of one example forward.",
            ["model", "variant"],
            **MODEL_GAUGE,
        ),
        active=prom.Gauge(
            "slimserve_active_variant",
            "1 for the variant serving a model, 0 for variants that served before.",
            ["model", "variant", "profile"],
            **MODEL_GAUGE,
        ),
        swaps=prom.Counter(
            "slimserve_swaps_total", "Variant swaps by reason.", ["model", "reason"]
        ),
        refused=prom.Counter(
            "slimserve_variant_load_failures_total",
            "Variants refused at load (checksum mismatch, missing files).",
            ["model"],
        ),
        forced=prom.Counter(
            "slimserve_forced_activations_total",
            "Rejected variants an operator served anyway (admin activate with force).",
            ["model"],
        ),
        store_refusals=prom.Counter(
            "slimserve_store_refusals_total",
            "Variants the service would not store or serve, by reason (store_full, "
            "store_read_only, variant_corrupted, shipped_corrupted, cache_corrupted, "
            "cache_untrusted, cache_unavailable); the originals keep serving.",
            ["model", "reason"],
        ),
    )


def _job_series(prom) -> dict:
    """Compression jobs: wall time and outcomes."""
    return dict(
        compression_seconds=prom.Histogram(
            "slimserve_compression_seconds",
            "Wall time of compression jobs.",
            ["model", "profile"],
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800),
        ),
        jobs=prom.Counter(
            "slimserve_compression_jobs_total",
            "Compression jobs by outcome (succeeded, rejected, failed, timeout, cancelled).",
            ["profile", "outcome"],
        ),
        fleet_leases=prom.Counter(
            "slimserve_fleet_lease_events_total",
            "This replica and the fleet's compression lease (SLIMSERVE_VARIANT_CACHE), by event: "
            "acquired, taken_over (from a holder whose lease expired), lost, released, "
            "adopted (a variant the fleet published), declined (the fleet published a refusal).",
            ["model", "event"],
        ),
    )


def _live_series(prom) -> dict:
    """Shadow evaluation of variants on live traffic."""
    return dict(
        live_fidelity=prom.Gauge(
            "slimserve_live_fidelity",
            "Agreement of a variant with its original on shadowed live requests (windowed): "
            "cosine (embeddings), top1 and tv_distance (classifiers).",
            ["model", "variant", "metric"],
            **MODEL_GAUGE,
        ),
        live_budget=prom.Gauge(
            "slimserve_live_budget",
            "Lowest acceptable live fidelity of a variant (its verified cosine budget, or the "
            "top-1 agreement setting).",
            ["model", "variant", "metric"],
            **MODEL_GAUGE,
        ),
        shadow_samples=prom.Counter(
            "slimserve_shadow_samples_total",
            "Live samples a variant was compared with its original on (shadow evaluation).",
            ["model", "variant"],
        ),
    )


def record_variant(model: str, variant: str, profile: str, report: dict | None) -> None:
    """Publish a variant's verified figures (original: params/MACs and metric from its report)."""
    s = series()
    if not report:
        return
    s.accuracy.labels(model, variant, report["metric"]).set(report["metric_after"])
    s.budget.labels(model, variant, report["metric"]).set(report.get("budget", 0.0))
    s.speedup.labels(model, variant).set(report.get("speedup", 1.0))
    s.params.labels(model, variant).set(report["params_after"])
    s.macs.labels(model, variant).set(report["macs_after"])
    # Labelled tasks: macro precision, recall and F1 beside the verified metric.
    for name, value in ((report.get("task_metrics") or {}).get("after") or {}).items():
        if name != report["metric"]:
            s.accuracy.labels(model, variant, name).set(value)


# The reasons slimserve_store_refusals_total counts (a bounded label).
REFUSAL_REASONS = (
    "store_full",  # the store lacks SLIMSERVE_MIN_FREE_BYTES plus the variant's size
    "store_read_only",  # the store cannot be written
    "variant_corrupted",  # a stored variant failed its checks (files, types, checksums)
    "shipped_corrupted",  # a task directory's variant failed them
    "cache_corrupted",  # a shared-cache entry failed them
    "cache_untrusted",  # a shared-cache entry without a valid keyed digest (SLIMSERVE_CACHE_KEY)
    "cache_unavailable",  # the shared store could not be read (network, credentials, permissions)
)


def record_refusal(model: str, reason: str) -> None:
    """Count a variant the service would not store or serve (``reason``: REFUSAL_REASONS)."""
    if reason not in REFUSAL_REASONS:
        raise ValueError(f"unknown refusal reason {reason!r}")
    series().store_refusals.labels(model, reason).inc()


def record_size(model: str, variant: str, params: int, macs: int | None) -> None:
    """Publish a model's size, e.g. the original's as soon as it serves."""
    s = series()
    s.params.labels(model, variant).set(params)
    if macs is not None:
        s.macs.labels(model, variant).set(macs)


def record_swap(model: str, old: tuple[str, str] | None, new: tuple[str, str], reason: str) -> None:
    """Move the active flag from ``old`` (variant, profile) to ``new`` and count the swap."""
    s = series()
    if old is not None and old != new:
        s.active.labels(model, *old).set(0)
    s.active.labels(model, *new).set(1)
    if reason != "start":
        s.swaps.labels(model, reason).inc()
