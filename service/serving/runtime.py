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

Cost per request is bounded: a request holds at most ``max_rows`` rows (413 beyond), a request
larger than ``max_batch_size`` rows is split into micro-batch-sized chunks (all of them run on
the variant active when it arrived, so its answer names one variant), and every model has its
own execution lane (a one-thread executor), so a slow model's forwards never delay a fast
model's. An empty request answers an empty output without a forward.

Device: the runtime places every variant it serves on its ``device`` (``cuda`` or ``cpu``,
``auto`` picks CUDA where present) when it is added or swapped in, and each forward moves its
batch to wherever the variant's weights are. int8-dynamic variants stay on the CPU (their
kernels exist nowhere else); 2:4-sparse variants get their sparse weights on placement (see
``compression.forms.precision.place``). On CUDA the micro-batches default to
:data:`GPU_MAX_BATCH_SIZE` samples: a GPU forward costs about the same for 8 samples as for
256, so larger batches are throughput for free.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import random
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from compression.core.inputs import to_device
from compression.forms.precision import device_of, is_quantized, place
from service.serving.errors import BadRequest, Overloaded, PayloadTooLarge

log = logging.getLogger("slimserve.runtime")

CPU_MAX_BATCH_SIZE = 32
GPU_MAX_BATCH_SIZE = 256


def resolve_device(spec: str = "auto") -> str:
    """``auto`` -> ``cuda`` where CUDA is available, else ``cpu``; ``cuda[:N]`` must exist."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: no CUDA device is available here; use cpu or auto")
    torch.device(spec)  # raises on a malformed name
    return spec


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


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
    active: Active | None = None  # a chunk of a split request: runs on this variant


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
    lane: ThreadPoolExecutor | None = None  # this model's forward thread (its own)


class Runtime:
    """Active variants of every served model, batched inference, atomic swaps."""

    def __init__(
        self,
        max_batch_size: int | None = 32,
        max_wait_ms: float = 2.0,
        queue_size: int = 2048,
        max_rows: int = 512,
        device: str = "cpu",
    ):
        self.models: dict[str, Served] = {}
        self.device = resolve_device(device)
        gpu = self.device.startswith("cuda")
        default_batch = GPU_MAX_BATCH_SIZE if gpu else CPU_MAX_BATCH_SIZE
        self.max_batch_size = max_batch_size or default_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.max_rows = max_rows
        self._tasks: list[asyncio.Task] = []
        self._swap_lock = threading.Lock()
        # Device copies of the modules served here, per caller's module (see place()).
        self._placed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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
        active = self.place(active)
        # One forward thread per model: a slow model's forwards never queue a fast one's.
        lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{name}")
        self.models[name] = Served(name, adapter, active, reservoir, threads=threads, lane=lane)

    def place(self, active: Active) -> Active:
        """``active`` on this runtime's device: as is when it is there (or int8, CPU-only), else
        a device copy, made once per module, so callers' modules never move under them."""
        module = active.module
        if is_quantized(module) or _same_device(device_of(module), torch.device(self.device)):
            return active
        placed = self._placed.get(module)
        if placed is None:
            placed = place(copy.deepcopy(module), self.device).eval()
            self._placed[module] = placed
        return dataclasses.replace(active, module=placed)

    def device_of(self, name: str) -> str:
        """Where model ``name``'s active variant runs (``cuda:0``, ``cpu``): /admin/models."""
        return str(device_of(self.models[name].active.module))

    def swap(self, name: str, active: Active) -> Active:
        """Make ``active`` serve ``name``; returns the variant it replaced."""
        active = self.place(active)  # before the lock: a device copy takes a moment
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
        """Run ``rows`` (one request's samples) through the model's active variant.

        Over ``max_rows`` rows: :class:`PayloadTooLarge` (413). Over ``max_batch_size`` rows:
        split into chunks that queue like requests, all pinned to the variant active now.
        """
        served = self.models[name]
        n = len(rows)
        if n > self.max_rows:
            raise PayloadTooLarge(
                f"{name}: a request holds at most {self.max_rows} rows "
                f"(SLIMSERVE_MAX_ROWS_PER_REQUEST), this one has {n}; split it"
            )
        if n == 0:
            return _empty_output(served), served.active
        self._ensure_worker(served)
        loop = asyncio.get_running_loop()
        step = self.max_batch_size
        pinned = served.active if n > step else None
        chunks = [rows[i : i + step] for i in range(0, n, step)]
        if self.queue_size - served.queue.qsize() < len(chunks):
            raise Overloaded(f"{name}: {served.queue.qsize()} requests already queued; retry later")
        futures = []
        for chunk in chunks:  # no await in between: all chunks queue, or none
            futures.append(loop.create_future())
            served.queue.put_nowait(_Pending(chunk, futures[-1], pinned))
        if served.reservoir is not None:
            served.reservoir.add(rows)
        if len(futures) == 1:
            return await futures[0]
        results = await asyncio.gather(*futures)
        return np.concatenate([out for out, _ in results]), pinned

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
            current = served.active  # read once: the whole batch runs on this variant ...
            groups: dict[int, tuple[Active, list[_Pending]]] = {}
            for p in batch:  # ... but for chunks pinned to another one (a swap meanwhile)
                active = p.active or current
                groups.setdefault(id(active), (active, []))[1].append(p)
            for active, group in groups.values():
                await self._run(loop, served, active, group)

    async def _run(self, loop, served: Served, active: Active, batch: list[_Pending]) -> None:
        """One forward of ``batch`` on ``active`` in the model's lane; answer every future."""
        try:
            outputs = await loop.run_in_executor(
                served.lane,
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
            return
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
            torch.set_num_threads(threads)  # per thread (OpenMP): each model's lane keeps its own
        batch = adapter.collate(rows)
        device = device_of(active.module)
        if device.type != "cpu":  # the batch goes where the variant's weights are
            batch = to_device(batch, device)
        with torch.inference_mode():
            return adapter.outputs(adapter.call(active.module, batch), batch)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for served in self.models.values():
            if served.lane is not None:
                served.lane.shutdown(wait=False, cancel_futures=True)


def _empty_output(served: Served) -> np.ndarray:
    """The answer to a request of no rows: zero rows of the model's output shape."""
    spec = served.adapter.signature.outputs[0]
    if any(d < 0 for d in spec.shape[1:]):
        raise BadRequest(f"{served.name}: a request needs at least one row")
    return np.zeros((0, *spec.shape[1:]), dtype=np.float32)
