"""What a variant claims for its decisive metric: a one-sided 95 % bound, and how it was made.

The claim decides acceptance (:func:`compression.search.verify.confirm`) and is the report's
``metric_after``. How it is bounded depends on the metric:

- **continuous** (cosine, the perplexity ratio, IoU): the confirmation figure lowered by the loss
  it added over selection and by :data:`compression.evaluation.bounds.Z` standard errors
  (:func:`compression.search.splits.claim`);
- **agreement** (top-1 and sequence agreement with the original): Wilson's bound on the inputs
  no fit or choice saw, the confirmation split and the spare calibration inputs (the pool), at
  a disagreement rate never under the confirmation split's, shifted as cosine is (the larger
  of the selection and confirmation losses, plus what confirmation lost beyond selection). The
  pool lends its size, not its rate: spare calibration is often the model's own training data,
  where a variant agrees more than on what it will serve (digits-cnn at 80 %: 0.98 on
  training digits, 0.96 on held-out ones, ``benchmarks/results/claims_kinds.md``);
- **accuracy**: the accuracy drop is paired (variant and original on the same labelled samples)
  and can never exceed the share of inputs on which their answers differ. So the claimed drop
  is the smaller of two upper bounds: the disagreement's Wilson bound on the pool (no labels
  needed, so a thousand inputs where labels are hundreds; its rate floored at the confirmation
  split's, as above) and the paired drop plus Z standard errors, whose per-sample variance is
  at most that disagreement. A few hundred labelled samples then do not decide alone;
- F1 and a callable: as measured (no bound is known for them).

Where the measured figure holds the budget and the bound does not, the data cannot verify the
budget: :attr:`Claim.needed` says in words how many samples would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compression.evaluation import bounds, metrics
from compression.search import splits
from compression.search.context import Built, SearchContext


@dataclass
class Claim:
    value: float  # the claimed metric
    method: str  # how it was bounded, in words
    samples: int  # the samples the bound rests on
    needed: str | None = None  # measured within budget, not verifiable: what would verify it

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "samples": self.samples,
            "needed": self.needed,
        }


def metric_claim(ctx: SearchContext, built: Built, got: splits.Measured) -> Claim:
    """The claim for ``built``'s metric from its confirmation figures ``got``."""
    metric, ev = ctx.metric, ctx.confirmation
    value, n = got.figures[0], ev.samples
    if metric in splits.CONTINUOUS_METRICS:
        return _continuous(ctx, built, got)
    if metric in splits.AGREEMENT_METRICS:
        conf = got.agreement
        rows = _pool_agreement(ctx, built) if ctx.pool is not None else conf
        loss_sel, loss_conf = 1.0 - built.candidate.metric, 1.0 - float(conf.mean())
        loss = max(loss_sel, loss_conf) + max(0.0, loss_conf - loss_sel)  # splits.shifted
        low = 1.0 - _disagreement_bound(1.0 - rows, loss)
        method = _method(rows, f"{metric} agreement with the original") + (
            f", at a disagreement of at least {loss:.4f} (confirmation's, shifted)"
        )
        needed = None
        if 1.0 - loss >= ev.budget > low:
            needed = _needed_for_rate(loss, 1.0 - ev.budget, len(rows))
        return Claim(low, method, len(rows), needed)
    if metric == "accuracy" and ctx.pool is not None:
        return _accuracy(ctx, built, got, n)
    return Claim(value, f"{metrics.metric_name(metric)} as measured (no bound for it)", n)


def _continuous(ctx: SearchContext, built: Built, got: splits.Measured) -> Claim:
    ev, sel, c = ctx.confirmation, ctx.selection, built.candidate
    value, error, n = got.figures[0], got.errors[0], ctx.confirmation.samples
    shifted = splits.shifted(sel.metric_before, c.metric, ev.metric_before, value)
    claimed = shifted - bounds.Z * error
    needed = None
    if value >= ev.budget > claimed and shifted > ev.budget and error > 0:
        spread = error * math.sqrt(n)
        count = math.ceil((bounds.Z * spread / (shifted - ev.budget)) ** 2)
        needed = (
            f"{count} confirmation samples (has {n}) would bound it over {ev.budget:.4f} at the "
            "spread measured"
        )
    method = (
        f"measured on {n} samples, lowered by the loss added over selection and by "
        f"{bounds.Z} standard errors (one-sided 95 %)"
    )
    return Claim(claimed, method, n, needed)


def _pool_agreement(ctx: SearchContext, built: Built):
    """Per-sample agreement of ``built`` with the original on the pool (measured once)."""
    if built.pool_agreement is None:
        got = splits.measure_all(built.module, ctx.pool, ctx.pool.reading.metric, None)
        built.pool_agreement = got.agreement
    return built.pool_agreement


def _disagreement_bound(disagree: np.ndarray, floor: float) -> float:
    """A one-sided 95 % upper bound on the disagreement rate of per-input ``disagree`` values,
    their rate taken as at least ``floor`` (the pool lends its size, not a lower rate)."""
    n = len(disagree)
    if bounds.binary(disagree):
        return bounds.rate_interval(math.ceil(max(float(disagree.sum()), floor * n)), n)[1]
    mean = max(float(disagree.mean()), floor)
    spread = float(disagree.std(ddof=1)) if n > 1 else 0.0
    return mean + bounds.Z * spread / math.sqrt(max(n, 1))


def _method(rows, what: str) -> str:
    if bounds.binary(rows):
        return f"Wilson's one-sided 95 % bound on {what} over {len(rows)} unseen inputs"
    return f"the mean of {what} over {len(rows)} unseen inputs less {bounds.Z} standard errors"


def _needed_for_rate(rate: float, limit: float, has: int) -> str:
    count = bounds.samples_for_rate(rate, limit)
    if count is None:
        return f"no sample count: its disagreement {rate:.2%} is not under {limit:.2%}"
    return (
        f"{count} unseen inputs (has {has}) would bound a disagreement of {rate:.2%} under "
        f"{limit:.2%}"
    )


def _accuracy(ctx: SearchContext, built: Built, got: splits.Measured, n: int) -> Claim:
    ev, max_drop, value = ctx.confirmation, ctx.profile.max_drop, got.figures[0]
    drop = ev.metric_before - value  # paired: the same labelled samples
    rows = _pool_agreement(ctx, built)
    disagree = 1.0 - rows
    rate = float(disagree.mean())
    floor = 1.0 - float(got.agreement.mean())  # the confirmation split's own disagreement
    high = _disagreement_bound(disagree, floor)
    paired = drop + bounds.Z * math.sqrt(high / n)
    claimed = max(drop, min(high, paired))
    method = (
        f"the accuracy drop on {n} labelled samples, bounded by the smaller of the "
        f"disagreement with the original over {len(rows)} unseen inputs ({high:.4f}, Wilson, "
        f"its rate at least the confirmation split's {floor:.4f}) "
        f"and the paired drop plus {bounds.Z} standard errors ({paired:.4f}); one-sided 95 %"
    )
    needed = None
    if drop <= max_drop + 1e-9 < claimed:
        labelled = (
            math.ceil(bounds.Z**2 * high / (max_drop - drop) ** 2) if drop < max_drop else None
        )
        count = bounds.samples_for_rate(max(rate, floor), max_drop)
        ways = []
        if labelled is not None:
            ways.append(f"{labelled} labelled samples (has {n})")
        if count is not None:
            ways.append(f"{count} unlabelled inputs (has {len(rows)})")
        needed = (
            f"the data cannot verify the {max_drop:g} budget: measured drop {drop:.4f}, "
            f"bounded at {claimed:.4f}; "
            + (" or ".join(ways) + " would" if ways else "no sample count would")
        )
    return Claim(ev.metric_before - claimed, method, n, needed)
