"""The data plane: the served models, inference with its metrics, and client-error counting.

Every front end (the v2 routes, BentoML's ``/predict``) decodes a request, calls
:meth:`DataPlane.infer`, and encodes what it returns; none of them touches the runtime directly.
Nothing here imports a web framework.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from compression.evaluation.measure import macs_params
from compression.forms import packing
from service.models import ModelBundle
from service.serving import metrics
from service.serving.adapters import adapter_for
from service.serving.errors import Overloaded, UnknownModel
from service.serving.registry import ORIGINAL
from service.serving.runtime import Active, Reservoir, Runtime, Served

log = logging.getLogger("slimserve")

# A model whose forward costs less than this per sample (one thread, a full batch) is lighter
# than the HTTP work of its requests: it gets one torch thread and leaves the rest to the loop.
LIGHT_MODEL_MS_PER_SAMPLE = 0.5


class DataPlane:
    """Served models and their inference path."""

    def __init__(self, runtime: Runtime, thread_budget: int, pack_originals: bool = True) -> None:
        self.runtime = runtime
        self.thread_budget = thread_budget
        self.pack_originals = pack_originals
        self.bundles: dict[str, ModelBundle] = {}
        self.originals: dict[str, torch.nn.Module] = {}  # as loaded: weights, digests, copies
        self.served_originals: dict[str, torch.nn.Module] = {}  # as they serve (maybe packed)

    # ---- models ------------------------------------------------------------------------------

    def add_model(self, bundle: ModelBundle, reservoir: Reservoir | None) -> Served:
        """Serve ``bundle``'s model in its original form; its gauges appear at once."""
        name = bundle.name
        module = bundle.factory().eval()
        self.bundles[name], self.originals[name] = bundle, module
        self.served_originals[name] = self._packed(bundle, module)
        adapter = adapter_for(bundle, module)
        original = Active(ORIGINAL, "none", self.served_originals[name])
        threads = self._forward_threads(name, adapter, original)
        self.runtime.add(name, adapter, original, reservoir, threads)
        metrics.record_swap(name, None, (ORIGINAL, "none"), "start")
        metrics.record_size(name, ORIGINAL, *_size(bundle, module))
        return self.runtime.models[name]

    def _packed(self, bundle: ModelBundle, module: torch.nn.Module) -> torch.nn.Module:
        """The original as it serves: a BERT-family encoder on a CPU runs its real tokens only
        (``compression.forms.packing``: no padding computed), where that reproduces the padded
        forward on two of its calibration batches; otherwise as it is.

        The same outputs without the padding's compute: the original a user gets is the
        fastest exact form there is, and other servers and variants are measured against it.
        """
        if not self.pack_originals or not self.runtime.device.startswith("cpu"):
            return module
        checks = [b[0] if isinstance(b, tuple) else b for b in (bundle.calibration or [])[:2]]
        if not checks or packing.why_not(module, checks[0]) is not None:
            return module
        ok, note = packing.check(module, checks)
        log.info("model %s: the original serves %s (%s)", bundle.name,
                 "on packed tokens" if ok else "padded", note)  # fmt: skip
        return packing.served(module) if ok else module

    def _forward_threads(self, name: str, adapter, original: Active) -> int:
        """Torch threads for this model's forwards: all cores only where compute dominates.

        The worker's event loop needs a core of its own for HTTP: at ~0.35 ms of CPU per
        request (digits-cnn, 2 cores, 2700 req/s) a light model's forward costs less than its
        requests do, and a second torch thread only takes that core from the loop. Measured
        with benchmarks/loadgen.py (tritonclient, 8 s per cell, this 2-core machine):
        digits-cnn at 1 thread 970/1320/2400 req/s at concurrency 1/8/32 vs 590/1020/2400 at
        2; minilm at 2 threads 285 req/s vs 172 at 1 (c=32).
        """
        cores = self.thread_budget
        if cores == 1:
            return 1
        n = self.runtime.max_batch_size
        rows = [adapter.probe_rows(n)]
        before = torch.get_num_threads()
        try:
            Runtime._forward(adapter, original, rows, threads=1)  # warm-up
            times = []
            for _ in range(3):
                start = time.perf_counter()
                Runtime._forward(adapter, original, rows, threads=1)
                times.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(before)
        per_sample_ms = sorted(times)[1] * 1000 / n
        threads = 1 if per_sample_ms < LIGHT_MODEL_MS_PER_SAMPLE else cores
        log.info(
            "model %s: %.3f ms per sample at 1 thread -> %d torch threads",
            name,
            per_sample_ms,
            threads,
        )
        return threads

    def served(self, name: str) -> Served:
        """The served model ``name``, or :class:`UnknownModel` (404)."""
        try:
            return self.runtime.models[name]
        except KeyError:
            raise UnknownModel(
                f"unknown model {name!r}: this server serves {sorted(self.runtime.models)}"
            ) from None

    def models(self) -> list[dict]:
        return [
            {
                "name": n,
                "active_variant": s.active.variant,
                "profile": s.active.profile,
                "threads": s.threads,
                "device": self.runtime.device_of(n),
            }
            for n, s in self.runtime.models.items()
        ]

    # ---- inference ---------------------------------------------------------------------------

    async def infer(self, name: str, rows: np.ndarray) -> tuple[np.ndarray, Active]:
        """Batched inference with latency and outcome metrics."""
        served = self.served(name)
        s = metrics.series()
        start = time.perf_counter()
        s.inflight.labels(name).inc()
        try:
            out, active = await self.runtime.infer(name, rows)
        except Overloaded:
            s.requests.labels(name, served.active.variant, "overloaded").inc()
            raise
        except Exception:
            s.requests.labels(name, served.active.variant, "error").inc()
            raise
        finally:
            s.inflight.labels(name).dec()
        s.latency.labels(name, active.variant, active.profile).observe(time.perf_counter() - start)
        s.requests.labels(name, active.variant, "ok").inc()
        return out, active

    def count_client_error(self, name: str) -> None:
        """Count a request refused before inference (4xx); unknown names share one label."""
        served = self.runtime.models.get(name)
        variant = served.active.variant if served else "none"
        label = name if served else "unknown"
        metrics.series().requests.labels(label, variant, "client_error").inc()


def _size(bundle: ModelBundle, module: torch.nn.Module) -> tuple[int, int | None]:
    """Parameters and (where the catalog gives example inputs) MACs of the original."""
    params = sum(p.numel() for p in module.parameters())
    if bundle.example_inputs is None:
        return params, None
    try:
        macs, _ = macs_params(module, bundle.example_inputs)
    except Exception as err:  # a gauge is not worth failing start-up for
        log.warning("model %s: cannot count MACs of the original: %s", bundle.name, err)
        return params, None
    return params, macs
