"""The record of one candidate: what the search measured of a variant it built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Candidate:
    """One variant the search built and measured."""

    ratio: float
    allocation: str
    precision: str
    macs: int
    params: int
    latency_ms: float
    metric: float
    fidelity: float
    within_budget: bool
    note: str = ""
    recall: float | None = None  # neighbour recall@10 (cosine metric), see metrics
    sparsity: str = "none"  # "2:4" or "unstructured" (then params counts nonzero weights)
    packed: bool = False  # served on packed tokens (compression.forms.packing), not padded batches
