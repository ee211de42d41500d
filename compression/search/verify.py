"""Verify: choose the winner among the measured candidates and re-time it against the original.

Every candidate was measured once by the search (metric, fidelity, MACs, params, latency).
Here the ones within budget compete: for a size budget the most accurate one that fits, else
the fastest, after re-timing the close contenders side by side (:func:`confirm_latencies`).
The winner is then measured on the confirmation split, which no choice has seen
(:mod:`compression.search.splits`): it is accepted only when what it claims there holds its budget
(for continuous metrics the measured figure lowered by the loss it added over selection), else
the next one is tried. The winner and the original are timed in the same interleaved rounds
(or, where no contenders were re-timed, back to back), so the reported speed-up compares like
with like, and the variant is accepted only when it is faster or smaller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from compression.core.candidate import Candidate
from compression.evaluation import metrics
from compression.evaluation.measure import latency_ms, macs_params, side_by_side_ms
from compression.search import claims, splits
from compression.search.context import Built, SearchContext

# A winner on the selection split that fails on the confirmation split is dropped and the next
# one confirmed; after this many, nothing is accepted (the selection split is not telling).
MAX_CONFIRMATIONS = 8
# Among candidates tied on latency, MAC counts within this factor of the fewest are a tie too
# (one structure in several precisions has one MAC count).
MAC_TIE = 1.05


@dataclass
class Verdict:
    """The chosen candidate and what verification measured about it."""

    chosen: Built  # the winner, or the least pruned candidate when nothing is within budget
    accepted: bool
    reason: str
    target_met: bool
    latency_ms_before: float
    latency_ms_after: float
    speedup: float
    macs_before: int
    params_before: int
    # The chosen candidate on the confirmation split: {"metric", "fidelity", "recall"}; None
    # when there is no confirmation split (then the selection figures stand).
    confirmed: dict | None = None
    refused: list[str] = field(default_factory=list)  # winners on selection that did not hold


def confirm_latencies(
    ctx: SearchContext, fits: list[Built], contenders: int = 3, rounds: int = 3
) -> None:
    """Re-time the fastest candidates in interleaved rounds; each keeps its median.

    Candidates were first timed minutes apart; a busy moment on a shared machine can make a
    lightly pruned one look fastest. Timing the contenders in turn, round after round, exposes
    them all to the same load, so the comparison holds. The original runs in the same rounds:
    its median there is what the winner's speed-up is measured against (:func:`verify`).
    """
    ranked = sorted(fits, key=lambda b: b.candidate.latency_ms)
    close = [
        b
        for b in ranked[:contenders]
        if b.candidate.latency_ms <= 1.5 * ranked[0].candidate.latency_ms
    ]
    if not close or ctx.original_ms is not None:
        return  # nothing to time, or timed side by side already (a re-choice after a refusal)
    start = time.perf_counter()
    times = side_by_side_ms(
        [ctx.original] + [b.module for b in close], ctx.latency_batch, ctx.profile.device, rounds
    )
    ctx.original_ms, ctx.retimed_ids = times[0], {id(b.module) for b in close}
    for b, ms in zip(close, times[1:], strict=True):
        b.candidate.latency_ms = round(ms, 4)
    ctx.tick("verify", start)


def choose(ctx: SearchContext, built: list[Built], original: Candidate) -> tuple[Built | None, str]:
    """The winner and why; None with the reason when nothing is within budget."""
    fits = [b for b in built if b.candidate.within_budget and not b.candidate.note]
    refused = [b for b in built if b.candidate.note == splits.REFUSED_NOTE]
    if not fits and refused:
        return None, (
            f"no candidate held its budget on the confirmation split ({len(refused)} refused; "
            f"first: {refusal(ctx, refused[0])})"
        )
    if not fits:
        best = max(built, key=lambda b: b.candidate.metric, default=None)
        got = f"{best.candidate.metric:.4f}" if best else "nothing (time limit)"
        reason = f"no candidate within budget: best {ctx.metric} {got} < budget {ctx.budget:.4f}"
        if best and best.candidate.recall is not None and best.candidate.metric >= ctx.budget:
            reason = (
                f"no candidate within budget: best {ctx.metric} {got} keeps only "
                f"{best.candidate.recall:.4f} of the 10 nearest neighbours "
                f"(floor {ctx.profile.min_neighbour_recall})"
            )
        return None, reason
    target = ctx.profile.target_size_ratio
    if target is not None:
        small = [b for b in fits if b.candidate.params <= target * original.params]
        if small:
            return max(
                small, key=lambda b: (b.candidate.metric, -b.candidate.params)
            ), "size target met"
        return min(
            fits, key=lambda b: b.candidate.params
        ), "size target not reached; smallest within budget"
    confirm_latencies(ctx, fits)
    # The re-timed contenders compete among themselves: their latencies come from the same
    # rounds, where the others' came from the search, minutes apart (mixing the two let a
    # busy moment decide). The rest compete only once every contender was refused.
    pool = [b for b in fits if id(b.module) in ctx.retimed_ids] or fits
    # Latencies within 5% of the fastest are a tie on a noisy machine. Among them the fewest MACs
    # win: a cut that only ties on the latency batch still saves its work at other batch sizes
    # and under load, where the tie does not hold. Within MAC_TIE of the fewest (one structure
    # in several precisions), the most faithful wins.
    fastest = min(b.candidate.latency_ms for b in pool)
    ties = [b for b in pool if b.candidate.latency_ms <= 1.05 * fastest]
    fewest = min(b.candidate.macs for b in ties)
    lean = [b for b in ties if b.candidate.macs <= MAC_TIE * fewest]
    best = min(
        lean, key=lambda b: (-b.candidate.fidelity, b.candidate.macs, b.candidate.latency_ms)
    )
    return best, (
        "fastest candidate within budget (ties within 5%: the fewest MACs, and within "
        f"{MAC_TIE:g}x of those the most faithful)"
    )


def verify(ctx: SearchContext, candidates: list[Built], base: Built) -> Verdict:
    """Choose among ``candidates`` (``base`` is the original, measured like one) and re-time.

    >>> verdict = verify(ctx, run(ctx, base), base)  # doctest: +SKIP
    >>> verdict.accepted, verdict.speedup  # doctest: +SKIP
    (True, 2.4)
    """
    winner, reason = choose(ctx, candidates, base.candidate)
    confirmed = confirm(ctx, winner) if winner is not None else None
    tries = 0
    while winner is not None and confirmed is not None and not confirmed["ok"]:
        winner.candidate.note = splits.REFUSED_NOTE  # choose() skips it from now on
        tries += 1
        if tries >= MAX_CONFIRMATIONS:
            winner = None
            break
        winner, reason = choose(ctx, candidates, base.candidate)
        confirmed = confirm(ctx, winner) if winner is not None else None
    # Every candidate refused on confirmation, here or by the search (which confirms a
    # structure before trying lower precisions or runtimes on it).
    refused = [refusal(ctx, b) for b in candidates if b.candidate.note == splits.REFUSED_NOTE]
    if winner is None and refused:
        reason = (
            f"no candidate held its budget on the confirmation split ({len(refused)} refused; "
            f"first: {refused[0]})"
        )
    if winner is None and ctx.unprunable:
        reason = f"cannot prune: {ctx.unprunable}" + (f"; {reason}" if candidates else "")
    ctx.progress(0.95, "verifying")
    chosen = winner or min(candidates, key=lambda b: b.candidate.ratio, default=base)
    if winner is None and ctx.confirmation is not None:
        confirmed = confirm(ctx, chosen)  # the report's figures come from one split
    profile = ctx.profile
    # The reported speed-up compares like with like: the winner and the original timed in the
    # same interleaved rounds (confirm_latencies), else now, back to back.
    if ctx.original_ms is not None and id(chosen.module) in ctx.retimed_ids:
        lat_before, lat_after = ctx.original_ms, chosen.candidate.latency_ms
    else:
        start = time.perf_counter()
        lat_before = latency_ms(
            ctx.original, ctx.latency_batch, profile.device, profile.latency_repeats
        )
        lat_after = latency_ms(
            chosen.module, ctx.latency_batch, profile.device, profile.latency_repeats
        )
        ctx.tick("verify", start)
    macs_before, params_before = macs_params(ctx.original, ctx.example_inputs)
    speedup = lat_before / max(lat_after, 1e-9)
    c = chosen.candidate
    accepted = winner is not None and (
        speedup > 1.0 or c.params < params_before or c.macs < macs_before
    )
    if winner is not None and not accepted:
        reason = "no candidate within budget is faster or smaller than the original"
    target_met = accepted and (
        (profile.target_speedup is None or speedup >= profile.target_speedup)
        and (
            profile.target_size_ratio is None
            or c.params <= profile.target_size_ratio * params_before
        )
    )
    return Verdict(
        chosen=chosen,
        accepted=accepted,
        reason=reason,
        target_met=target_met,
        latency_ms_before=lat_before,
        latency_ms_after=lat_after,
        speedup=speedup,
        macs_before=macs_before,
        params_before=params_before,
        confirmed=confirmed,
        refused=refused,
    )


def refusal(ctx: SearchContext, built: Built) -> str:
    """What a candidate refused on the confirmation split measured there, in one line."""
    c, held = built.candidate, built.confirmed or {}
    if not held:
        return f"{c.ratio:.0%} {c.allocation} {c.precision}"
    needed = held.get("claim", {}).get("needed")
    return (
        f"{c.ratio:.0%} {c.allocation} {c.precision}: {metrics.metric_name(ctx.metric)} "
        f"{c.metric:.4f} on selection, {held['measured']['metric']:.4f} on confirmation "
        f"(claims {held['metric']:.4f} on {held['claim']['samples']} samples)"
        + (f" (recall {held['recall']:.4f})" if held["recall"] is not None else "")
        + (f"; {needed}" if needed else "")
    )


def confirm(ctx: SearchContext, built: Built) -> dict | None:
    """The candidate on the confirmation split, and what it claims there; None without one.

    ``metric`` is the claim for the decisive metric (:func:`compression.search.claims.metric_claim`:
    a one-sided 95 % bound, made as its metric calls for), ``fidelity`` and ``recall`` the
    claims for cosine and neighbour recall (:func:`compression.search.splits.claim`);
    ``measured`` holds the figures as measured, ``standard_error`` their errors, ``claim`` how
    the metric's claim was bounded, on how many samples, and, where the measured figure holds
    the budget but its bound does not, how many samples would verify it. Acceptance (``ok``)
    is decided on the claims (and, for a labelled metric, on the measured figure too).
    """
    ev = ctx.confirmation
    if ev is None:
        return None
    if built.confirmed is not None:
        return built.confirmed
    start = time.perf_counter()
    floor = ctx.profile.min_neighbour_recall
    got = splits.measure_all(built.module, ev, ctx.metric, floor)
    value, fidelity, recall = got.figures
    errors = got.errors
    c = built.candidate
    stated = claims.metric_claim(ctx, built, got)
    ctx.tick("verify", start)
    claim_fidelity = splits.claim(1.0, c.fidelity, 1.0, (fidelity, errors[1]))
    claim_recall = recall
    if recall is not None and c.recall is not None:
        own = splits.claim(1.0, c.recall, 1.0, (recall, errors[2]))
        claim_recall = splits.recall_claim(own, recall, fidelity, claim_fidelity)
    ok = splits.within(ev, stated.value, claim_recall, floor) and value >= ev.budget - 1e-9
    built.confirmed = {
        "metric": round(stated.value, 6),
        "fidelity": round(claim_fidelity, 6),
        "recall": None if claim_recall is None else round(claim_recall, 4),
        "measured": {
            "metric": round(value, 6),
            "fidelity": round(fidelity, 6),
            "recall": None if recall is None else round(recall, 4),
        },
        "standard_error": {
            "metric": round(errors[0], 6),
            "fidelity": round(errors[1], 6),
            "recall": None if errors[2] is None else round(errors[2], 4),
        },
        "claim": stated.to_dict(),
        "ok": ok,
    }
    return built.confirmed


def holds(ctx: SearchContext, built: Built) -> bool:
    """Whether a candidate holds its budget on the confirmation split (measured once and kept,
    :func:`confirm`); one that does not is marked, so it is never chosen."""
    held = confirm(ctx, built)
    if held is not None and not held["ok"]:
        built.candidate.note = splits.REFUSED_NOTE
        return False
    return True
