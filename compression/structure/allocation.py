"""Split a pruning amount across layers: which channels of which unit go.

``uniform`` removes the same fraction from every unit. ``global`` ranks all heads/channels of
all units together (scores normalised per unit, so units of different scale compare) and
removes the lowest, never emptying a unit. Kept widths are rounded up to ``round_to`` channels.
"""

from __future__ import annotations

import math

import torch

from compression.structure.graph import PruneUnit
from compression.structure.importance import granule_scores

MAX_UNIT_RATIO = 0.9  # a unit keeps at least 10% of its heads/channels


def _kept_granules(unit: PruneUnit, kept: int, round_to: int) -> int:
    """Round a kept count so the kept *channel* width is a multiple of round_to."""
    step = max(1, round_to // math.gcd(round_to, unit.granule))
    kept = max(1, math.ceil(kept / step) * step)
    return min(kept, unit.groups)


def _removed_channels(unit: PruneUnit, g_scores: torch.Tensor, kept: int) -> list[int]:
    order = torch.argsort(g_scores, stable=True)  # least important first
    drop = order[: unit.groups - kept].tolist()
    return sorted(c for g in drop for c in range(g * unit.granule, (g + 1) * unit.granule))


def allocate(
    units: list[PruneUnit],
    scores: dict[str, torch.Tensor],
    ratio: float,
    mode: str = "uniform",
    round_to: int = 1,
) -> dict[str, list[int]]:
    """Channel indices to remove per unit so that about ``ratio`` of the channels go."""
    per_unit = {u.name: granule_scores(u, scores[u.name]) for u in units}
    if mode == "uniform":
        kept = {u.name: u.groups - math.floor(ratio * u.groups + 1e-9) for u in units}
    elif mode == "global":
        entries = []
        for u in units:
            s = per_unit[u.name]
            normalised = s / s.mean().clamp_min(1e-12)
            entries += [(float(v), u.name, u.granule) for v in normalised]
        entries.sort()
        budget = ratio * sum(u.size for u in units)
        removed_count = {u.name: 0 for u in units}
        limit = {u.name: math.floor(MAX_UNIT_RATIO * u.groups) for u in units}
        removed = 0.0
        for _, name, granule in entries:
            if removed + granule > budget + 1e-9:
                break
            if removed_count[name] < limit[name]:
                removed_count[name] += 1
                removed += granule
        kept = {u.name: u.groups - removed_count[u.name] for u in units}
    else:
        raise ValueError(f"unknown allocation {mode!r}; expected 'uniform' or 'global'")
    return {
        u.name: _removed_channels(u, per_unit[u.name], _kept_granules(u, kept[u.name], round_to))
        for u in units
    }
