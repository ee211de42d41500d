"""The run over pruning amounts: the ladder, from the layer split decided at its first amount
(:mod:`compression.search.layer_split`) up until an amount misses its budget or is predicted
to (:mod:`compression.search.ladder`); then the precision and sparsity steps on what holds."""

from __future__ import annotations

import time

from compression.core.errors import Cancelled, CompressionError
from compression.search import sparsity_step, splits
from compression.search.context import Built, SearchContext, build, measure
from compression.search.ladder import MIN_RATIO, backoff, predicted_miss, predicted_refusal
from compression.search.layer_split import choose_split
from compression.search.precision_step import with_precision
from compression.search.verify import holds


def run(ctx: SearchContext, original_built: Built) -> list[Built]:
    """All candidates the search built, in the order it built them."""
    ratios = sorted(ctx.profile.ratios)
    built: list[Built] = []

    def step(ratio: float, mode: str, made=None) -> Built | None:
        ctx.check()
        done = len(built) / (len(ratios) + 1)
        ctx.progress(0.1 + 0.7 * done, f"{mode} allocation, pruning {ratio:.0%}")
        try:
            b = build(ctx, ratio, mode, made)
        except Cancelled:
            raise
        except (CompressionError, RuntimeError, ValueError, IndexError) as err:
            # A cut the model cannot take (or a forward it no longer runs) ends this amount,
            # recorded in the report; the search goes on with what it has.
            ctx.failures.append(f"{mode} {ratio:.0%}: {type(err).__name__}: {err}"[:300])
            return None
        built.append(b)
        return b

    def fits(b: Built | None) -> bool:
        return b is not None and b.candidate.within_budget

    # For a continuous metric each amount within budget is confirmed as soon as it is built
    # (the precision step would confirm it anyway): its claim steers the next amounts
    # (predicted_refusal), and an amount refused there ends the ladder like one over budget.
    early = ctx.confirmation is not None and ctx.metric in splits.CONTINUOUS_METRICS

    def ok(b: Built | None) -> bool:
        return fits(b) and (not early or holds(ctx, b))

    if not ctx.units:  # nothing to prune (ctx.unprunable says why): precision only
        mode, last_ok, ratios = "none", False, []
    elif ctx.profile.allocation == "search":
        mode, ratios, last_ok = choose_split(ctx, ratios, step, ok)
    else:
        mode = ctx.profile.allocation
        first = step(ratios[0], mode)
        ratios, last_ok = ratios[1:], ok(first)
    if ctx.units and built and not any(ok(b) for b in built):
        # The smallest amount already breaks the budget: back off below it.
        smaller, why = backoff(ctx, [b for b in built if b.candidate.allocation == mode])
        if smaller >= MIN_RATIO and time.monotonic() < ctx.deadline:
            ctx.skipped.append(f"{mode} {sorted(ctx.profile.ratios)[0]:.0%}: backed off: {why}")
            step(smaller, mode)
    for ratio in ratios:
        if not last_ok or time.monotonic() > ctx.deadline:
            break  # larger amounts only lose more
        same = [b for b in built if b.candidate.allocation == mode]
        miss = predicted_miss(ctx, same, ratio) or predicted_refusal(ctx, same, ratio)
        if miss:
            ctx.skipped.append(f"{mode} {ratio:.0%}: {miss}")
            break
        last_ok = ok(step(ratio, mode))
    # Precision on the three fastest within budget, the most faithful one (lower precision
    # costs quality: the candidate with the most headroom may be the one that stays within
    # budget), and the unpruned model.
    ctx.progress(0.85, "precision")
    within = sorted(
        (b for b in built if b.candidate.within_budget and b.candidate.note != splits.REFUSED_NOTE),
        key=lambda b: b.candidate.latency_ms,
    )
    tries = within[:3]
    if within:
        faithful = max(within, key=lambda b: b.candidate.fidelity)
        tries += [faithful] if faithful not in tries else []
    tries = [b for b in tries if holds(ctx, b)]  # lower precision of a refused one is refused
    for b in [*tries, original_built]:
        ctx.check()
        if time.monotonic() > ctx.deadline:
            break
        built += with_precision(ctx, b)
    # The profile's sparsity step (2:4 on CUDA, unstructured for a size budget) on what fits.
    built += sparsity_step.candidates(ctx, [*built, original_built], measure, Built)
    return built
