"""The amount ladder's foresight: which amount not to build, and where to back off to.

A continuous metric (cosine fidelity, perplexity ratio) falls at least linearly with the amount
pruned, so lines through what was measured bound what an amount not yet built can reach: on
the selection split (:func:`predicted_miss`), on the confirmation split's claims
(:func:`predicted_refusal`), and below the smallest amount when it misses (:func:`backoff`).
:func:`compression.search.run.run` asks these before each build.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from compression.search import splits

if TYPE_CHECKING:
    from compression.search.context import Built, SearchContext

MIN_RATIO = 0.05  # the smallest amount the search backs off to
# How far under the budget an extrapolated claim must end before its amount is skipped
# (predicted_refusal). A claim is the difference of two splits' losses, so it is noisier than a
# selection figure: an MLP's claims at 10, 20, 30 % were 0.9947, 0.9884, 0.9868, the last 0.0047
# above the line through the first two (tests/unit/compression/test_search.py).
CLAIM_NOISE = 0.005


def _line(p1: tuple[float, float], p2: tuple[float, float], x: float) -> float:
    """The value at ``x`` of the line through points ``p1`` and ``p2`` (``p1[0] < p2[0]``)."""
    (x1, y1), (x2, y2) = p1, p2
    return y2 + (y2 - y1) * (x - x2) / (x2 - x1)


def predicted_miss(ctx: SearchContext, built: list[Built], ratio: float) -> str | None:
    """Why ``ratio`` cannot be within budget, extrapolated from the last two amounts; or None.

    A continuous metric (cosine fidelity, perplexity ratio; accuracy moves in steps of one
    sample and is not extrapolated) falls at least linearly with the amount pruned: each
    further channel removed matters more than the last (MiniLM, global: 0.979, 0.963, 0.938 at
    20, 30, 40 %; the MLP in tests/unit/compression/test_search.py likewise).
    So when the line through the last two amounts already ends under the budget at ``ratio``,
    building it (a prune, a rebuild and a measurement) would only confirm the miss.
    """
    if ctx.metric not in splits.CONTINUOUS_METRICS or len(built) < 2:
        return None
    last = sorted(built, key=lambda x: x.candidate.ratio)[-2:]
    (r1, a), (r2, b) = ((x.candidate.ratio, x.candidate) for x in last)
    if not r1 < r2 < ratio:
        return None
    value = _line((r1, a.metric), (r2, b.metric), ratio)
    if value < ctx.budget:
        return (
            f"not built: {ctx.metric} extrapolates to {value:.4f} < budget {ctx.budget:.4f} "
            f"(from {a.metric:.4f} at {r1:.0%} and {b.metric:.4f} at {r2:.0%})"
        )
    floor = ctx.profile.min_neighbour_recall
    if floor is not None and a.recall is not None and b.recall is not None:
        recall = _line((r1, a.recall), (r2, b.recall), ratio)
        if recall < floor:
            return (
                f"not built: neighbour recall extrapolates to {recall:.4f} < floor {floor} "
                f"(from {a.recall:.4f} at {r1:.0%} and {b.recall:.4f} at {r2:.0%})"
            )
    return None


def predicted_refusal(ctx: SearchContext, built: list[Built], ratio: float) -> str | None:
    """Why ``ratio`` would be refused on the confirmation split, extrapolated from what the
    amounts built so far claim there (:func:`compression.search.verify.confirm`); or None.

    The same argument as :func:`predicted_miss`, with one more point: pruning nothing claims
    the original's own figure (fidelity 1.0). If the loss grows at least linearly with the
    amount, the line through the origin and the first amount lies above the curve beyond it
    (MiniLM, global, on selection: losses 0.021, 0.037, 0.062 at 20, 30, 40 %). Where the
    claims, not the selection figures, are what run out (MiniLM, global: cosine 0.979 on
    selection at 20 % and 0.963 at 30 %, both within 0.95, but 30 % claims 0.925 on the
    confirmation split), this spares building an amount only to refuse it. The line must end
    :data:`CLAIM_NOISE` under the budget.
    """
    ev = ctx.confirmation
    if ev is None or ctx.metric not in splits.CONTINUOUS_METRICS:
        return None
    claimed = sorted(
        (b for b in built if b.confirmed is not None and 0 < b.candidate.ratio < ratio),
        key=lambda b: b.candidate.ratio,
    )
    if not claimed:
        return None
    # Neighbour recall drops most at the first amount (MiniLM: 0.857 at 20 %, 0.806 at 30 %): a
    # neighbour swaps once the outputs move by more than the gap to the next one, so the loss
    # grows with the outputs' displacement, the square root of the cosine loss, and at least
    # with the square root of the amount. From the origin and one amount, that root; from two
    # amounts, the line through them (it lies above the curve beyond them).
    points = [(0.0, ev.metric_before, None)] + [
        (b.candidate.ratio, b.confirmed["metric"], b.confirmed["recall"]) for b in claimed
    ]
    (r1, m1, c1), (r2, m2, c2) = points[-2:]
    value = _line((r1, m1), (r2, m2), ratio)
    if value < ev.budget - CLAIM_NOISE:
        return (
            f"not built: its {ctx.metric} claim on the confirmation split extrapolates to "
            f"{value:.4f} < budget {ev.budget:.4f} (from {m1:.4f} at {r1:.0%} and {m2:.4f} at "
            f"{r2:.0%})"
        )
    floor = ctx.profile.min_neighbour_recall
    if floor is not None and c2 is not None:
        if c1 is not None:
            recall, c1_text = _line((r1, c1), (r2, c2), ratio), f"{c1:.4f}"
        else:  # MiniLM, global: 10 % claims 0.8453, so 20 % at most 0.7812 (it claims 0.7654)
            recall, c1_text = 1.0 - (1.0 - c2) * math.sqrt(ratio / r2), "1.0000 (the root)"
        if recall < floor - CLAIM_NOISE:
            return (
                f"not built: its neighbour recall claim on the confirmation split extrapolates "
                f"to {recall:.4f} < floor {floor} (from {c1_text} at {r1:.0%} and {c2:.4f} at "
                f"{r2:.0%})"
            )
    return None


def backoff(ctx: SearchContext, built: list[Built]) -> tuple[float, str]:
    """The amount to try below the smallest one, which broke the budget, and why that one.

    For a continuous metric it is where the line from the original's figure to the smallest
    amount's crosses the budget: if the loss grows at least linearly with the amount (see
    :func:`predicted_refusal`), the curve lies above that line below the amount, so the
    crossing is within budget. Otherwise (accuracy; a recall floor missed) half the amount.
    """
    ratio = sorted(ctx.profile.ratios)[0]
    half = round(ratio / 2, 4), f"half of {ratio:.0%}"
    first = next((b for b in built if b.candidate.ratio == ratio), None)
    if first is None or ctx.metric not in splits.CONTINUOUS_METRICS:
        return half
    c = first.candidate
    line = None
    if c.metric < ctx.budget:  # over budget on the selection split
        line = (ctx.selection.metric_before, c.metric, ctx.budget, "selection")
    elif first.confirmed is not None and first.confirmed["metric"] < ctx.confirmation.budget:
        ev = ctx.confirmation
        line = (ev.metric_before, first.confirmed["metric"], ev.budget, "confirmation claim")
    if line is None or line[0] <= line[1]:
        return half  # the recall floor was missed: recall does not fall linearly from 0
    before, value, budget, where = line
    crossing = ratio * (before - budget) / (before - value)
    crossing = int(crossing * 100) / 100  # down to whole percent
    return crossing, (
        f"{ctx.metric} {value:.4f} ({where}) < budget {budget:.4f}; the line from "
        f"{before:.4f} at 0% crosses the budget at {crossing:.0%}"
    )
