"""Shadow evaluation: a compressed variant measured against its original on live traffic.

After a served batch, the runtime offers it here. A sampled fraction (at most ``max_per_second``
batches a second) is queued, bounded: when the queue is full the sample is skipped, never
waited for. One low-priority thread (``nice`` 19) runs the *other* model of the pair on the
same rows — the original while a variant serves, or the canary while the original serves — and
measures per-sample agreement. A canary that arrives while another variant serves is measured
too: every other sample runs both the canary and the original on the served rows (two forwards
instead of one), so it is judged against the original as always, and the serving variant's own
window keeps filling with the rest:

- embeddings: cosine between the two outputs (``metric="cosine"``);
- classifiers: top-1 agreement (``"top1"``), and the total-variation distance between the two
  softmax distributions (``"tv_distance"``, reported only).

An embedding window also keeps both models' embeddings of its samples, and measures
neighbour recall@10 among them (``"neighbour_recall"``: whether the same served sentences stay
each other's nearest neighbours, :func:`compression.evaluation.metrics.neighbour_recall`). Verification
can only measure recall on its own sentences, and how much of it a cut keeps depends on how
close together the sentences lie (the claim held on the engine's splits and missed by up to
0.036 on package READMEs, ``benchmarks.claims``): the served traffic's own pool is the one
that counts. Near-duplicate rows (the same sentence served twice) are left out of the pool,
since the order among them is noise.

A sliding window per (model, variant) feeds ``slimserve_live_fidelity`` and
``slimserve_shadow_samples_total`` and, once it holds ``min_samples``, the decision callback
(promote a canary, roll back an active variant).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from compression.evaluation import bounds, kinds
from compression.evaluation.metrics import neighbour_recall
from service.serving import metrics
from service.serving.runtime import Active, Runtime, Served

log = logging.getLogger("slimserve.shadow")


@dataclass
class Window:
    """The last ``size`` per-sample agreements of one (model, variant) pair."""

    metric: str
    size: int
    values: deque = field(default_factory=deque)
    extra: dict[str, deque] = field(default_factory=dict)
    samples: int = 0
    # Embedding windows: (variant's, original's) embedding of each sample in the window.
    pairs: deque = field(default_factory=deque)
    recall: float | None = None  # neighbour recall@k among ``pairs`` (see recall_of)

    def add(
        self,
        values: np.ndarray,
        extra: dict[str, np.ndarray],
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        for v in values.tolist():
            self.values.append(v)
        for name, vals in extra.items():
            self.extra.setdefault(name, deque(maxlen=self.size)).extend(vals.tolist())
        while len(self.values) > self.size:
            self.values.popleft()
        self.samples += len(values)
        if pairs is not None:
            self.pairs.extend(zip(*pairs, strict=True))
            while len(self.pairs) > self.size:
                self.pairs.popleft()
            self.recall = recall_of(self.pairs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def full(self) -> bool:
        return len(self.values) >= self.size

    def bounds(self) -> tuple[float, float]:
        """One-sided 95 % bounds (low, high) on the window's mean agreement, as verification
        bounds its claims (:func:`compression.evaluation.bounds.interval`): Wilson's interval
        where each sample agrees or not (top-1, a sequence), the mean +- Z standard errors for
        a continuous figure (cosine, IoU, agreement over a sample's positions)."""
        values = np.asarray(self.values, dtype=np.float64)
        if len(values) < 2:
            return float("-inf"), float("inf")
        return bounds.interval(values)

    def summary(self) -> dict:
        out = {"metric": self.metric, "value": round(self.mean, 6), "window": len(self.values)}
        out["samples"] = self.samples
        for name, vals in self.extra.items():
            out[name] = round(float(np.mean(vals)), 6) if vals else None
        if self.recall is not None:
            out["neighbour_recall"] = round(self.recall, 6)
        return out


RECALL_K = 10  # as verification's neighbour recall@10
DUPLICATE_COSINE = 0.9999  # rows the original embeds this close are one sentence served twice


def recall_of(pairs, k: int = RECALL_K) -> float | None:
    """Neighbour recall@``k`` of the variant's embeddings against the original's among the
    distinct samples of ``pairs``; None while there are ``2 k`` or fewer."""
    if len(pairs) <= 2 * k:
        return None
    variant = torch.from_numpy(np.stack([v for v, _ in pairs]))
    original = torch.from_numpy(np.stack([o for _, o in pairs]))
    unit = torch.nn.functional.normalize(original, dim=1)
    close = (unit @ unit.T).triu(diagonal=1) > DUPLICATE_COSINE
    keep = ~close.any(0)  # drop a row when an earlier one is (nearly) the same
    if int(keep.sum()) <= 2 * k:
        return None
    return neighbour_recall([variant[keep]], [original[keep]], k)


def agreement(
    served_out: np.ndarray,
    other_out: np.ndarray,
    embedding: bool,
    reading: kinds.Reading | None = None,
):
    """(decision metric name, per-sample values, extra per-sample series).

    The figure is the one verification decided by (``reading``, from the variant's report:
    :mod:`compression.evaluation.kinds`). Without one, class scores are read along their last
    dimension, and a sample with several positions (a tagger's or a CTC head's scores per
    step, ``[B, T, C]``) agrees only where every position's top class does: one flipped step
    changes the answer its user reads.
    """
    a = torch.from_numpy(np.asarray(served_out, dtype=np.float32))
    b = torch.from_numpy(np.asarray(other_out, dtype=np.float32))
    if embedding or (reading is not None and reading.metric == "cosine"):
        cos = torch.nn.functional.cosine_similarity(
            a.reshape(len(a), -1), b.reshape(len(b), -1), dim=1
        )
        return "cosine", cos.numpy(), {}
    if reading is not None and reading.metric == "iou":
        values = kinds.agreement_rows(
            kinds.answers(a, None, reading), kinds.answers(b, None, reading), reading
        )
        return "iou", values.float().numpy(), {}
    tv = 0.5 * (a.softmax(-1) - b.softmax(-1)).abs().sum(-1)
    extra = {"tv_distance": tv.reshape(len(tv), -1).mean(1).numpy()}
    if reading is not None and reading.metric in kinds.ANSWERED:
        values = kinds.agreement_rows(
            kinds.answers(a, None, reading), kinds.answers(b, None, reading), reading
        )
        return reading.metric, values.float().numpy(), extra
    same = a.argmax(-1) == b.argmax(-1)
    top1 = same.reshape(len(same), -1).all(1).float()
    return "top1", top1.numpy(), extra


def reading_of(report: dict | None) -> kinds.Reading | None:
    """How verification read a variant's outputs (its report's ``metric_reading``), or None
    (an older report, a labelled metric: the outputs' top class decides)."""
    got = (report or {}).get("metric_reading") or {}
    if got.get("metric") not in kinds.KINDS:
        return None
    fields = ("metric", "why", "blank", "threshold")
    return kinds.Reading(**{k: got[k] for k in fields if k in got})


@dataclass
class _Job:
    served: Served
    served_variant: Active
    other: Active
    rows: list[np.ndarray]
    outputs: np.ndarray
    # Set when ``other`` (a canary) is measured against this model (the original) on ``rows``
    # rather than against ``outputs`` (a variant serves): the canary's window.
    reference: Active | None = None


class ShadowEvaluator:
    """Samples served batches, runs the other model of the pair, keeps windows, decides."""

    def __init__(
        self,
        fraction: float,
        max_per_second: float,
        window: int,
        min_samples: int,
        queue_size: int = 4,
        seed: int = 0,
    ) -> None:
        self.fraction = fraction
        self.max_per_second = max_per_second
        self.window = window
        self.min_samples = min_samples
        self.windows: dict[tuple[str, str], Window] = {}
        self.skipped = 0
        self.canaries: dict[str, Active] = {}
        self.originals: dict[str, Active] = {}
        self.on_window: Callable[[str, str, Window], None] | None = None
        # Puts the other model of a pair where the served one runs (the runtime's device).
        self.place: Callable[[Active], Active] | None = None
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._rng = random.Random(seed)
        self._tokens, self._last = max_per_second, time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- the request side: cheap, never blocks -------------------------------------------------

    def offer(
        self, served: Served, active: Active, rows: list[np.ndarray], out: np.ndarray
    ) -> None:
        """Called after a served batch; queues a sample for the shadow thread, or skips it."""
        other, reference = self._pair(served.name, active), None
        if other is None or self.fraction <= 0 or self._rng.random() >= self.fraction:
            return
        canary = self.canaries.get(served.name)
        if active.variant != "original" and canary is not None and self._rng.random() < 0.5:
            other, reference = canary, other  # the canary against the original, same rows
        now = time.monotonic()
        self._tokens = min(
            self.max_per_second, self._tokens + (now - self._last) * self.max_per_second
        )
        self._last = now
        if self._tokens < 1.0:
            return
        # Under load the serving queue has work waiting: shadow work would compete with it.
        if served.queue is not None and served.queue.qsize() > 0:
            self.skipped += 1
            return
        try:
            self._queue.put_nowait(_Job(served, active, other, rows, out, reference))
            self._tokens -= 1.0
        except queue.Full:
            self.skipped += 1

    def _pair(self, name: str, active: Active) -> Active | None:
        """What the served batch is compared with: the original, or the canary."""
        if active.variant != "original":
            return self.originals.get(name)
        return self.canaries.get(name)

    # ---- the shadow thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        # Below serving: Linux schedules this thread (and the threads it starts) last.
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._evaluate(job)
            except Exception:  # a shadow failure never reaches a client
                log.exception("shadow evaluation of %s failed", job.served.name)

    def _evaluate(self, job: _Job) -> None:
        adapter = job.served.adapter
        place = self.place or (lambda model: model)
        other_out = Runtime._forward(adapter, place(job.other), job.rows)
        outputs = job.outputs
        if job.reference is not None:  # a canary while a variant serves: against the original
            outputs = Runtime._forward(adapter, place(job.reference), job.rows)
        embedding = getattr(adapter, "output_name", "") == "EMBEDDING"
        # The window belongs to the compressed variant of the pair.
        variant = job.served_variant if job.served_variant.variant != "original" else job.other
        if job.reference is not None:
            variant = job.other
        metric, values, extra = agreement(outputs, other_out, embedding, reading_of(variant.report))
        key = (job.served.name, variant.variant)
        pairs = None
        if embedding:  # (variant's, original's) rows: the served ones are the variant's when
            # a variant serves and no canary is measured against the original instead
            variant_is_served = job.served_variant.variant != "original" and job.reference is None
            pair = (outputs, other_out) if variant_is_served else (other_out, outputs)
            pairs = tuple(np.asarray(p, dtype=np.float32).reshape(len(values), -1) for p in pair)
        with self._lock:
            win = self.windows.get(key)
            if win is None:
                win = self.windows[key] = Window(metric, self.window)
            win.add(values, extra, pairs)
        s = metrics.series()
        s.shadow_samples.labels(job.served.name, variant.variant).inc(len(values))
        s.live_fidelity.labels(job.served.name, variant.variant, metric).set(win.mean)
        for name, vals in win.extra.items():
            s.live_fidelity.labels(job.served.name, variant.variant, name).set(float(np.mean(vals)))
        if win.recall is not None:
            s.live_fidelity.labels(job.served.name, variant.variant, "neighbour_recall").set(
                win.recall
            )
        if len(win.values) >= self.min_samples and self.on_window is not None:
            self.on_window(job.served.name, variant.variant, win)

    def reset(self, model: str, variant: str) -> None:
        """Forget a variant's window (after a swap changes what it is compared with)."""
        with self._lock:
            self.windows.pop((model, variant), None)

    def view(self, model: str) -> dict[str, dict]:
        """Per variant of ``model``: its live window's summary (for the admin API)."""
        with self._lock:
            return {v: w.summary() for (m, v), w in self.windows.items() if m == model}
