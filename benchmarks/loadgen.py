"""Closed-loop load with the real ``tritonclient.http`` client (binary tensors).

``concurrency`` greenlets share one client with as many connections; each sends its next
request as soon as the previous answer arrives, for ``duration`` seconds after ``warmup``.
Every request is timed from just before ``infer`` to just after it returns; a request that
raises (an HTTP error status, a dropped connection, a timeout) counts as failed. The client
runs in this process on the same CPU as the server it measures, the same way for every server.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.common import latency_summary


@dataclass(frozen=True)
class Target:
    """One model endpoint and the request every client sends it.

    With ``pool``, requests cycle through its rows instead, ``len(data)`` rows per request
    (live traffic that differs from request to request, as shadow evaluation needs).
    """

    address: str  # host:port
    model: str
    input_name: str
    output_name: str
    data: np.ndarray
    datatype: str = "FP32"
    pool: np.ndarray | None = None

    def requests(self) -> list[np.ndarray]:
        """The distinct request tensors, in the order clients send them."""
        if self.pool is None:
            return [self.data]
        n = len(self.data)
        return [
            np.ascontiguousarray(self.pool[i : i + n]) for i in range(0, len(self.pool) - n + 1, n)
        ]


@dataclass
class Run:
    """Every request of one load run: start/end times (perf_counter seconds) and outcome."""

    begin: float  # measurement window (after warm-up)
    end: float
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self, since: float | None = None, until: float | None = None) -> dict:
        """Throughput, latency percentiles and failures of the requests started in a window."""
        lo, hi = self.begin if since is None else since, self.end if until is None else until
        s, e, ok = (np.asarray(v) for v in (self.starts, self.ends, self.ok))
        inside = (s >= lo) & (s < hi)
        good = inside & ok.astype(bool)
        latencies = ((e[good] - s[good]) * 1000.0).tolist()
        done_inside = (e >= lo) & (e < hi) & ok.astype(bool)
        return {
            "requests": int(inside.sum()),
            "failed": int((inside & ~ok.astype(bool)).sum()),
            "throughput_rps": round(float(done_inside.sum()) / max(hi - lo, 1e-9), 1),
            **latency_summary(latencies),
            "errors": sorted(set(self.errors))[:5],
        }

    def overlapping(self, windows: list[tuple[float, float]], pad: float) -> dict:
        """Latencies of the requests in flight during any window (padded by ``pad`` s after)."""
        s, e, ok = (np.asarray(v) for v in (self.starts, self.ends, self.ok))
        hit = np.zeros(len(s), dtype=bool)
        for lo, hi in windows:
            hit |= (s < hi + pad) & (e > lo)
        good = hit & ok.astype(bool)
        return {
            "requests": int(hit.sum()),
            "failed": int((hit & ~ok.astype(bool)).sum()),
            **latency_summary(((e[good] - s[good]) * 1000.0).tolist()),
        }


def run_load(
    target: Target,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    during: Callable[[float, float], None] | None = None,
) -> Run:
    """Drive ``target`` with ``concurrency`` clients; ``during(begin, end)`` runs in a thread
    alongside (e.g. admin calls) and is joined before returning."""
    import gevent
    import tritonclient.http as tc

    client = tc.InferenceServerClient(
        target.address, concurrency=concurrency, connection_timeout=60, network_timeout=120
    )
    inputs = []
    for data in target.requests():
        inp = tc.InferInput(target.input_name, list(data.shape), target.datatype)
        inp.set_data_from_numpy(data, binary_data=True)
        inputs.append(inp)
    out = [tc.InferRequestedOutput(target.output_name, binary_data=True)]
    sent = itertools.count()
    now = time.perf_counter()
    run = Run(begin=now + warmup, end=now + warmup + duration)

    def worker() -> None:
        while True:
            start = time.perf_counter()
            if start >= run.end:
                return
            try:
                inp = inputs[next(sent) % len(inputs)]
                client.infer(target.model, [inp], outputs=out)
                ok = True
            except Exception as err:  # noqa: BLE001 - every failure counts, none stops the run
                ok = False
                run.errors.append(f"{type(err).__name__}: {str(err)[:160]}")
            run.starts.append(start)
            run.ends.append(time.perf_counter())
            run.ok.append(ok)

    side = None
    if during is not None:
        side = threading.Thread(target=during, args=(run.begin, run.end), daemon=True)
        side.start()
    try:
        gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)])
    finally:
        client.close()
        if side is not None:
            side.join(timeout=120)
    return run


def wait_for(target: Target, timeout: float = 60) -> None:
    """Send single requests until one succeeds (the model answers)."""
    import tritonclient.http as tc

    client = tc.InferenceServerClient(target.address)
    inp = tc.InferInput(target.input_name, list(target.data.shape), target.datatype)
    inp.set_data_from_numpy(target.data, binary_data=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.infer(target.model, [inp])
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        client.close()


def run_load_grpc(target: Target, concurrency: int, duration: float, warmup: float = 1.0) -> Run:
    """:func:`run_load` over gRPC (``target.address``: the gRPC host:port) with the real
    ``tritonclient.grpc.aio`` client: ``concurrency`` asyncio tasks on one channel, each sending
    its next request as soon as the previous answer arrives."""
    import asyncio

    import tritonclient.grpc.aio as tc

    async def drive() -> Run:
        client = tc.InferenceServerClient(target.address)
        inputs = []
        for data in target.requests():
            inp = tc.InferInput(target.input_name, list(data.shape), target.datatype)
            inp.set_data_from_numpy(data)
            inputs.append(inp)
        out = [tc.InferRequestedOutput(target.output_name)]
        sent = itertools.count()
        now = time.perf_counter()
        run = Run(begin=now + warmup, end=now + warmup + duration)

        async def worker() -> None:
            while True:
                start = time.perf_counter()
                if start >= run.end:
                    return
                try:
                    inp = inputs[next(sent) % len(inputs)]
                    await client.infer(target.model, [inp], outputs=out)
                    ok = True
                except Exception as err:  # noqa: BLE001 - every failure counts
                    ok = False
                    run.errors.append(f"{type(err).__name__}: {str(err)[:160]}")
                run.starts.append(start)
                run.ends.append(time.perf_counter())
                run.ok.append(ok)

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await client.close()
        return run

    return asyncio.run(drive())
