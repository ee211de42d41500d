"""The runtime: which variant serves each model, micro-batching, and atomic swaps.

Each model has one :class:`Served` record holding its *active* variant. A swap replaces that
record's ``active`` attribute in one assignment; a batch reads it once before its forward, so
requests in flight finish on the variant they started with and none fails because of a swap.

Requests queue per model in a bounded asyncio queue; one task drains it into micro-batches of
up to ``max_batch_size`` samples and runs the forward in a single worker thread. Batching is
adaptive: a batch takes whatever queued while the previous forward ran, and waits up to
``max_wait_ms`` for more only when the previous batch held more than one request (under load),
so a lone client is never delayed. Overload means queueing first; only a full queue answers
503. No bentoml import here: the runtime is testable without a server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.serving.errors import Overloaded

log = logging.getLogger("slimserve.runtime")


@dataclass(frozen=True)
class Active:
    """A variant ready to serve."""

    variant: str
    profile: str
    module: torch.nn.Module
    report: dict | None = None


class Reservoir:
    """A uniform sample of at most ``size`` request inputs (Vitter's algorithm R)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seen, self.items = size, 0, []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, rows: np.ndarray) -> None:
        with self._lock:
            for row in rows:
                self.seen += 1
                if len(self.items) < self.size:
                    self.items.append(row)
                else:
                    j = self._rng.randrange(self.seen)
                    if j < self.size:
                        self.items[j] = row

    def snapshot(self) -> list:
        with self._lock:
            return list(self.items)


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future


@dataclass
class Served:
    """One served model: adapter, active variant, queue and (optionally) a live sample."""

    name: str
    adapter: Any
    active: Active
    reservoir: Reservoir | None = None
    queue: asyncio.Queue | None = None
    history: list[str] = field(default_factory=list)
    last_batch: int = 0  # requests in the last micro-batch (adaptive wait)
    threads: int | None = None  # torch threads of this model's forwards (None: leave as set)


class Runtime:
    """Active variants of every served model, batched inference, atomic swaps."""

    def __init__(self, max_batch_size: int = 32, max_wait_ms: float = 2.0, queue_size: int = 2048):
        self.models: dict[str, Served] = {}
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._tasks: list[asyncio.Task] = []
        self._swap_lock = threading.Lock()
        # Called after every served batch (shadow evaluation); must be cheap and never raise.
        self.on_batch: Callable[[Served, Active, list[np.ndarray], np.ndarray], None] | None = None

    # ---- models and swaps ---------------------------------------------------------------------

    def add(
        self,
        name: str,
        adapter: Any,
        active: Active,
        reservoir: Reservoir | None = None,
        threads: int | None = None,
    ) -> None:
        self.models[name] = Served(name, adapter, active, reservoir, threads=threads)

    def swap(self, name: str, active: Active) -> Active:
        """Make ``active`` serve ``name``; returns the variant it replaced."""
        with self._swap_lock:
            served = self.models[name]
            old = served.active
            served.history.append(old.variant)
            served.active = active  # one assignment: batches read it once
        log.info("model %s now serves variant %s (was %s)", name, active.variant, old.variant)
        return old

    # ---- inference ----------------------------------------------------------------------------

    def _ensure_worker(self, served: Served) -> None:
        if served.queue is None:
            served.queue = asyncio.Queue(maxsize=self.queue_size)
            self._tasks.append(asyncio.get_running_loop().create_task(self._drain(served)))

    async def infer(self, name: str, rows: np.ndarray) -> tuple[np.ndarray, Active]:
        """Run ``rows`` (one request's samples) through the model's active variant."""
        served = self.models[name]
        self._ensure_worker(served)
        future = asyncio.get_running_loop().create_future()
        try:
            served.queue.put_nowait(_Pending(rows, future))
        except asyncio.QueueFull:
            raise Overloaded(
                f"{name}: {self.queue_size} requests already queued; retry later"
            ) from None
        if served.reservoir is not None:
            served.reservoir.add(rows)
        return await future

    async def _drain(self, served: Served) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await served.queue.get()
            batch, size = [first], len(first.rows)
            # Adaptive: wait for a batch to fill only under load (the last batch had company);
            # a lone client never pays the wait, a busy model batches more per forward.
            wait = self.max_wait if served.last_batch > 1 else 0.0
            deadline = loop.time() + wait
            while size < self.max_batch_size:
                try:
                    nxt = served.queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(served.queue.get(), timeout)
                    except TimeoutError:
                        break
                batch.append(nxt)
                size += len(nxt.rows)
            served.last_batch = len(batch)
            active = served.active  # read once: the whole batch runs on this variant
            try:
                outputs = await loop.run_in_executor(
                    self._executor,
                    self._forward,
                    served.adapter,
                    active,
                    [p.rows for p in batch],
                    served.threads,
                )
            except Exception as err:  # a forward failure fails this batch, not the worker
                log.exception("forward failed on %s/%s", served.name, active.variant)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            if self.on_batch is not None:
                try:
                    self.on_batch(served, active, [p.rows for p in batch], outputs)
                except Exception:  # observation only: never fails a served batch
                    log.exception("on_batch hook failed on %s", served.name)
            start = 0
            for p in batch:
                n = len(p.rows)
                if not p.future.done():
                    p.future.set_result((outputs[start : start + n], active))
                start += n

    @staticmethod
    def _forward(
        adapter: Any, active: Active, rows: list[np.ndarray], threads: int | None = None
    ) -> np.ndarray:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)  # forwards run on one thread: no other model races
        batch = adapter.collate(rows)
        with torch.inference_mode():
            return adapter.outputs(adapter.call(active.module, batch), batch)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
