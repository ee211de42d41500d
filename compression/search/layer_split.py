"""Which layer split the amount ladder goes on with: uniform or global, decided at its start.

Without BatchNorm both splits are cut at the first amount and only the one whose cut loses
less is rebuilt (:func:`split_by_cut`). With BatchNorm both are rebuilt and the one closer to
the original goes on, and where the two are too close to tell apart (:func:`split_tie`) both
are built at the next amount too. :func:`choose_split` is what :func:`compression.search.run.run`
calls.
"""

from __future__ import annotations

from collections.abc import Callable

from compression.core.errors import CompressionError
from compression.recovery import rebuild
from compression.search.context import Built, SearchContext, cut, served
from compression.structure import layers

# Two splits built at one amount whose fidelity and metric differ by less than this are a tie:
# the next amount decides (a fifth of the cpu profile's max_drop; under one digit in 225).
SPLIT_TIE = 0.002


def choose_split(
    ctx: SearchContext,
    ratios: list[float],
    step: Callable[..., Built | None],
    ok: Callable[[Built | None], bool],
) -> tuple[str, list[float], bool]:
    """The split the ladder goes on with, the amounts still to try, and whether the last amount
    built held its budget (``ok``). ``step(ratio, mode, made=None)`` builds one candidate."""
    decided = split_by_cut(ctx, ratios[0])
    if decided:
        mode, made, note = decided  # the split whose cut loses less goes on
        ctx.skipped += [note] if note else []
        first = step(ratios[0], mode, made) if made else None  # no cut: failures say why
        return mode, ratios[1:], ok(first)
    # Both splits built at the first amount; the one closer to the original goes on
    # (fidelity is continuous, where accuracy on a few hundred samples moves in steps).
    # Where both are within budget and within SPLIT_TIE of each other the amount did not
    # tell them apart, and both are built at the next one (such close splits can swap places
    # from one amount to the next, as digits-cnn's do, so the first amount is no choice).
    while True:
        trials = [b for mode in ("uniform", "global") if (b := step(ratios[0], mode))]
        best = max(
            trials,
            key=lambda b: (b.candidate.within_budget, b.candidate.fidelity),
            default=None,
        )
        ratios = ratios[1:]
        tied = len(trials) == 2 and all(ok(b) for b in trials)
        if not (tied and ratios and split_tie(trials)):
            break
    return (best.candidate.allocation if best else "uniform"), ratios, ok(best)


def split_tie(trials: list[Built]) -> bool:
    """Whether two splits built at one amount are too close to choose between: fidelity (and
    the metric) within :data:`SPLIT_TIE` of each other."""
    a, b = (t.candidate for t in trials)
    return abs(a.fidelity - b.fidelity) < SPLIT_TIE and abs(a.metric - b.metric) < SPLIT_TIE


def split_by_cut(ctx: SearchContext, ratio: float):
    """The layer split (uniform or global) whose cut at ``ratio`` loses less, with that cut;
    None for a model with BatchNorm layers (then both splits are built).

    Decided on the cut alone, before any rebuild: its calibration error on the probe, one
    forward per split, where building both costs two rebuilds. Measured before choosing this
    (uniform vs global at 20 % and 40 %): for models without BatchNorm (MiniLM, digits-mlp,
    and small BERT, GPT-2 and ConvNeXt) the split whose cut lost less had the better selection
    fidelity after the full rebuild in every pair tried; the error after bias compensation
    did not always (on MiniLM it ranked the splits the wrong way round). With BatchNorm
    neither the cut's error nor its error once the BatchNorms are recalibrated predicted the
    rebuilt fidelity (on ResNet and MobileNetV2 one or the other ranked the splits the wrong
    way round).

    Returns ``(mode, (pruned, removed), note)``; the cut is None when neither split can be cut.
    """
    if any(isinstance(m, layers.BATCHNORMS) for m in ctx.original.modules()):
        return None
    made, errors = {}, {}
    for mode in ("uniform", "global"):
        try:
            made[mode] = cut(ctx, ratio, mode)
        except (CompressionError, RuntimeError, ValueError, IndexError) as err:
            ctx.failures.append(f"{mode} {ratio:.0%}: {type(err).__name__}: {err}"[:300])
            continue
        errors[mode] = rebuild.calibration_error(
            served(ctx, made[mode][0]), ctx.probe, ctx.reference
        )
    if not errors:
        return "uniform", None, None
    mode = min(errors, key=errors.get)
    other = next((m for m in errors if m != mode), None)
    note = None
    if other is not None:
        note = (
            f"{other} {ratio:.0%}: not built: its cut's calibration error {errors[other]:.4f} > "
            f"{mode}'s {errors[mode]:.4f} (the split that loses less goes on)"
        )
    return mode, made[mode], note
