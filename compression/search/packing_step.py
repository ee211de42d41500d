"""The packing step of the search: whether every torch candidate is measured and served on
packed tokens (:mod:`compression.forms.packing`), decided once on the original."""

from __future__ import annotations

from compression.evaluation.measure import latency_ms
from compression.forms.packing import faithful, served
from compression.search.context import SCREEN_SECONDS


def decide(ctx, base) -> tuple[bool, float | None, str]:
    """Whether the search measures and serves every torch candidate packed: when the packed
    original reproduces the padded one (:func:`compression.forms.packing.check`) and is >= 5 % faster on the latency
    batch; the packed original's latency (ms) when measured; a line for the report.

    ``base`` is the original measured like a candidate (its padded latency).
    """
    profile = ctx.profile
    ok, note = ctx.pack_check or faithful(ctx.original, profile, [x for x, _ in ctx.validation[:2]])
    if not ok:
        return False, None, note
    ms = latency_ms(
        served(ctx.original),
        ctx.latency_batch,
        profile.device,
        profile.latency_repeats,
        1,
        max_seconds=SCREEN_SECONDS,
    )
    padded = base.candidate.latency_ms
    faster = ms < 0.95 * padded
    verdict = "every torch candidate is measured and served packed" if faster else "not used"
    return faster, ms, f"{note}; original {padded:.1f} ms padded, {ms:.1f} ms packed: {verdict}"
