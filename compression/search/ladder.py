"""The amount ladder's foresight: which amount not to build, and where to back off to.

A continuous metric (cosine fidelity, perplexity ratio) falls at least linearly with the amount
pruned, so lines through what was measured bound what an amount not yet built can reach: on
the selection split (:func:`predicted_miss`), on the confirmation split's claims
(:func:`predicted_refusal`), and below the smallest amount when it misses (:func:`backoff`).
:func:`compression.search.run.run` asks these before each build.
"""

from __future__ import annotations

import math

from compression.search import splits
from compression.search.context import Built, SearchContext

MIN_RATIO = 0.05  # the smallest amount the search backs off to
# How far under the budget an extrapolated claim must end before its amount is skipped
# (predicted_refusal). A claim is the difference of two splits' losses, so it is noisier than a
# selection figure: a claim can land a few thousandths above the line through the two before it
# (as the MLP's do in tests/unit/compression/test_search.py).
CLAIM_NOISE = 0.005


def _line(p1: tuple[float, float], p2: tuple[float, float], x: float) -> float:
    """The value at ``x`` of the line through points ``p1`` and ``p2`` (``p1[0] < p2[0]``)."""
    (x1, y1), (x2, y2) = p1, p2
    return y2 + (y2 - y1) * (x - x2) / (x2 - x1)


def predicted_miss(ctx: SearchContext, built: list[Built], ratio: float) -> str | None:
    """Why ``ratio`` cannot be within budget, extrapolated from the last two amounts; or None.

    A continuous metric (cosine fidelity, perplexity ratio; accuracy moves in steps of one
    sample and is not extrapolated) falls at least linearly with the amount pruned: each
    further channel removed matters more than the last (MiniLM's fidelity by amount, and the
    MLP's in tests/unit/compression/test_search.py, fall faster as the amount grows).
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
    amount, the line through the origin and the first amount lies above the curve beyond it.
    Where the claims, not the selection figures, are what run out (an amount within budget on
    selection can claim under it on the confirmation split: MiniLM's claims by amount in
    ``benchmarks/results/claims.md``), this spares building an amount only to refuse it. The
    line must end :data:`CLAIM_NOISE` under the budget.
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
    # Neighbour recall drops most at the first amount: a neighbour swaps once the outputs move
    # by more than the gap to the next one, so the loss grows with the outputs' displacement,
    # the square root of the cosine loss, and at least with the square root of the amount. From
    # the origin and one amount, that root; from two amounts, the line through them (it lies
    # above the curve beyond them).
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
        else:  # one amount: the square root through the origin and it (see above)
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
