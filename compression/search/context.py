"""The search: prune -> rebuild -> verify, over pruning amounts and layer splits, within budget.

The layer split (uniform or global) the ladder goes on with is decided at the first amount
(:mod:`compression.search.layer_split`); amounts are tried in increasing order
until one goes over budget (when the smallest is already over, half of it is tried); every
candidate is measured (metric on validation data, MACs, params, latency on the profile's
device; for the cosine metric also neighbour recall, see ``metrics.neighbour_recall``). The
profile's precision step is then tried on the fastest candidates, the most faithful one and the
unpruned model, kept only where it measurably speeds up and stays within budget. The winner is
the fastest candidate within budget, or for a size budget the most accurate one that fits
(chosen in :mod:`compression.search.verify`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from compression.core.candidate import Candidate
from compression.core.errors import Cancelled
from compression.core.inputs import Batch
from compression.evaluation import kinds, metrics
from compression.evaluation.measure import latency_ms, macs_params
from compression.forms import packing
from compression.profiles import DeviceProfile
from compression.recovery import rebuild
from compression.search import splits
from compression.structure import allocation, graph
from compression.structure.graph import PruneUnit

Progress = Callable[[float, str], None]
# A candidate's first timing is a screening: capped at this many seconds for a slow forward
# (fewer runs than the profile's latency_repeats), since the close contenders are timed again
# side by side before the choice (verify.confirm_latencies) and the winner against the original
# after it.
SCREEN_SECONDS = 0.5
# A screening stops at its first timed run only above this (and twice the fastest so far): a
# slow, clearly losing forward (such as an ONNX Runtime graph of a padded encoder) is not run
# again, while a fast one, whose single run is noise, is timed in full.
SCREEN_CUT_MS = 50.0


@dataclass
class Built:
    """A candidate's module with what it took to build it."""

    module: nn.Module
    float_module: nn.Module
    candidate: Candidate
    steps: list[dict] = field(default_factory=list)
    confirmed: dict | None = None  # its figures on the confirmation split, once measured
    smoothing: dict[str, torch.Tensor] | None = None  # int8 smoothing scales (a variant saves)
    pool_agreement: np.ndarray | None = None  # per input of ctx.pool, once measured (claims)


@dataclass
class SearchContext:
    """Everything measured once on the original and shared by every candidate."""

    original: nn.Module
    profile: DeviceProfile
    example_inputs: Batch
    calibration: Batch
    validation: list
    metric: metrics.Metric
    units: list[PruneUnit]
    scores: dict[str, torch.Tensor]
    stats: dict
    reference: torch.Tensor  # the original's outputs on ``probe``
    probe: Batch  # the calibration slice that decides which rebuild steps stay
    reference_val: list[torch.Tensor]
    latency_batch: Batch
    budget: float
    deadline: float
    progress: Progress
    should_stop: Callable[[], bool]
    timings: dict[str, float] = field(default_factory=dict)
    metric_before: float = 0.0  # the original's metric on the validation data
    unprunable: str | None = None  # why the model has no prunable unit (then: precision only)
    reference_perplexity: float | None = None  # metric "perplexity": the original's
    failures: list[str] = field(default_factory=list)  # amounts whose cut or rebuild failed
    skipped: list[str] = field(default_factory=list)  # amounts not built, and why
    # The contenders were timed side by side with the original (verify.confirm_latencies): the
    # original's latency in those rounds (None: not yet) and the contenders' modules (by id),
    # so the winner's speed-up needs no second timing.
    original_ms: float | None = None
    retimed_ids: set[int] = field(default_factory=set)
    # The evaluation splits (compression.search.splits): ``validation``, ``reference_val``, ``budget``,
    # ``metric_before`` and ``reference_perplexity`` above are the selection split's.
    selection: splits.Evaluation | None = None
    confirmation: splits.Evaluation | None = None  # None: too little data to hold any out
    # How the outputs are read for the metric (compression.evaluation.kinds), and the inputs no
    # fit or choice saw (confirmation and spare calibration) where answers are compared: the
    # disagreement there bounds a claim (verify.confirm).
    reading: kinds.Reading | None = None
    pool: splits.Evaluation | None = None
    in_sample: bool = False  # no validation and too little calibration to hold any out
    # packing.faithful on the original, from prepare: (packed reproduces it, the report's line)
    pack_check: tuple[bool, str] | None = None
    packed: bool = (
        False  # torch candidates run on packed tokens (compression.search.packing_step.decide)
    )
    refit_cache: dict = field(default_factory=dict)  # the original's layer outputs (refit)
    # int8 smoothing strength, chosen on the first structure quantized (compression.forms.smoothing);
    # "unset" until then, None for plain int8.
    smoothing_alpha: float | None | str = "unset"
    fastest_ms: float | None = None  # the fastest screening within budget so far

    def tick(self, key: str, start: float) -> None:
        self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - start, 3)

    def check(self) -> None:
        if self.should_stop():
            raise Cancelled("compression cancelled by the caller")


def measure(
    ctx: SearchContext, module: nn.Module, float_module: nn.Module, figures=None, **info
) -> Candidate:
    """Metric, fidelity, MACs, params and latency of one candidate (``figures``: its metric,
    fidelity and recall on the selection split where they are known without a forward)."""
    start = time.perf_counter()
    module = served(ctx, module)
    floor = ctx.profile.min_neighbour_recall
    value, fidelity, recall = figures or splits.measure(module, ctx.selection, ctx.metric, floor)
    macs, params = macs_params(float_module, ctx.example_inputs)
    within = splits.within(ctx.selection, value, recall, floor)
    lat, note = 0.0, "over budget: not timed"  # only candidates that can win are timed
    if within or info.get("ratio") == 0.0 and info.get("precision") == "float32":
        p = ctx.profile
        # One warm-up run (the first forward pays for allocation); a candidate whose first timed
        # run is over twice the fastest so far, and slow (SCREEN_CUT_MS), cannot be a contender
        # (verify times those within 1.5x of the fastest again), so its one run stands. Fast
        # forwards are timed in full: one run of a sub-millisecond model is noise.
        lat = latency_ms(
            module,
            ctx.latency_batch,
            p.device,
            p.latency_repeats,
            1,
            max_seconds=SCREEN_SECONDS,
            slower_than_ms=None
            if ctx.fastest_ms is None
            else max(2 * ctx.fastest_ms, SCREEN_CUT_MS),
        )
        if within:
            ctx.fastest_ms = lat if ctx.fastest_ms is None else min(ctx.fastest_ms, lat)
        note = ""
    ctx.tick("verify", start)
    return Candidate(
        macs=macs,
        params=params,
        latency_ms=round(lat, 4),
        metric=round(value, 6),
        fidelity=round(fidelity, 6),
        within_budget=within,
        recall=None if recall is None else round(recall, 4),
        note=note,
        packed=packing.is_packed(module),
        **info,
    )


def remeasure(
    ctx: SearchContext, module: nn.Module, source: Built, precision: str, figures=None
) -> Candidate:
    """:func:`measure` of another form of ``source``'s structure (a precision or a runtime):
    the same float structure, amount and split, labelled ``precision``."""
    c = source.candidate
    return measure(
        ctx,
        module,
        source.float_module,
        figures,
        ratio=c.ratio,
        allocation=c.allocation,
        precision=precision,
    )


def served(ctx: SearchContext, module: nn.Module) -> nn.Module:
    """``module`` as the search measures and serves it: packed when the search packs tokens
    (:mod:`compression.forms.packing`), else as it is."""
    return packing.served(module) if ctx.packed else module


def baseline(ctx: SearchContext) -> Built:
    """The original measured like a candidate (ratio 0, float32): what every candidate beats.

    Its figures on the selection split are the split's own: the split's reference outputs
    are the original's (a second forward over them gives the same numbers)."""
    sel = ctx.selection
    recall = (
        1.0 if ctx.metric == "cosine" and ctx.profile.min_neighbour_recall is not None else None
    )
    figures = (sel.metric_before, 1.0, recall)
    cand = measure(
        ctx, ctx.original, ctx.original, figures, ratio=0.0, allocation="none", precision="float32"
    )
    return Built(ctx.original, ctx.original, cand, [])


def cut(ctx: SearchContext, ratio: float, mode: str) -> tuple[nn.Module, dict[str, list[int]]]:
    """A copy of the original with ``ratio`` of its channels removed, split by ``mode``."""
    removed = allocation.allocate(ctx.units, ctx.scores, ratio, mode, ctx.profile.round_to)
    pruned = copy.deepcopy(ctx.original)
    graph.prune(pruned, ctx.example_inputs, removed)
    return pruned, removed


def build(ctx: SearchContext, ratio: float, mode: str, made=None) -> Built:
    """Prune ``ratio`` of the channels split by ``mode`` (or take ``made``, a :func:`cut`
    already made), then run the rebuild ladder."""
    start = time.perf_counter()
    pruned, removed = made or cut(ctx, ratio, mode)
    records = rebuild.rebuild(
        pruned,
        ctx.original,
        ctx.units,
        removed,
        ctx.calibration,
        ctx.reference,
        ctx.stats,
        ctx.profile.rebuild,
        ctx.profile.ridge,
        ctx.profile.distill_seconds,
        probe=ctx.probe,
        cache=ctx.refit_cache,
        served=lambda m: served(ctx, m),
    )
    pruned.eval()
    ctx.tick("prune_rebuild", start)
    cand = measure(ctx, pruned, pruned, ratio=ratio, allocation=mode, precision="float32")
    return Built(pruned, pruned, cand, [r.to_dict() for r in records])
