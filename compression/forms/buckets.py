"""Length buckets: which samples of a packed token batch attend together, and their attention.

Attention is the one step of a packed encoder (:mod:`compression.forms.packing`) that needs a
sequence per sample. Samples sorted by length go into a few buckets, each padded to its own
longest (:func:`length_buckets`); one gather per layer reads every bucket's padded grid from the
packed rows and one reads the outputs back (:func:`grid_index`); :func:`attention` runs on each
bucket as two matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# At most this many buckets, and one per this many samples (a bucket's fixed cost outweighs the
# padding it saves on smaller batches).
MAX_BUCKETS = 4
SAMPLES_PER_BUCKET = 8


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Softmax attention of ``q``, ``k``, ``v`` (``[samples, heads, width, head_dim]``) with the
    additive ``mask`` (``[samples, 1, 1, width]``), written out as two matrix products.

    What ``scaled_dot_product_attention`` computes, to float rounding; on the CPU its fused
    kernel is slower than these two products on short sequences and small heads (a BERT-family
    encoder's length buckets of served sentences), so it is not used here.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    scores.add_(mask.to(scores.dtype))
    return torch.matmul(scores.softmax(-1), v)


@dataclass(frozen=True)
class Bucket:
    """Samples of similar length whose attention runs together, padded to the longest of them.

    ``rows``: their real tokens' rows in the packed ``[tokens, width]`` matrix; ``slots``: the
    same tokens' flat positions in the bucket's ``[samples * width]`` grid; ``mask``: added to
    the attention scores, 0 where a query may see the key and ``-inf`` at the padded keys,
    ``[samples, 1, 1, width]``; ``source``: the packed row each grid position reads,
    ``[samples * width]`` (a padded position reads some real row: its key is masked and its
    query's output dropped, so what it holds does not matter).
    """

    samples: int
    width: int
    rows: torch.Tensor
    slots: torch.Tensor
    mask: torch.Tensor
    source: torch.Tensor


def bucket_sizes(widths: list[int], most: int) -> list[int]:
    """How many of the ``widths`` (sorted ascending) go into each of at most ``most`` buckets:
    the split that minimises the attention work, the sum over buckets of samples x width^2
    (dynamic programming over the cut points; every bucket is padded to its last width).

    >>> bucket_sizes([10, 11, 12, 50], 2)
    [3, 1]
    """
    n = len(widths)
    most = max(1, min(most, n))
    inf = float("inf")
    # cost[k][i]: least work for the first i widths in k buckets; cut[k][i]: where the last starts
    cost = [[inf] * (n + 1) for _ in range(most + 1)]
    cut = [[0] * (n + 1) for _ in range(most + 1)]
    cost[0][0] = 0.0
    for k in range(1, most + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):
                c = cost[k - 1][j] + (i - j) * widths[i - 1] ** 2
                if c < cost[k][i]:
                    cost[k][i], cut[k][i] = c, j
    k = min(range(1, most + 1), key=lambda k: cost[k][n])
    sizes, i = [], n
    while k > 0:
        j = cut[k][i]
        sizes.append(i - j)
        i, k = j, k - 1
    return sizes[::-1]


def length_buckets(keep: torch.Tensor) -> list[Bucket]:
    """The batch's samples grouped by length for attention (``keep``: ``[batch, length]``, which
    positions are real tokens).

    Attention is the one step that needs a sequence per sample, and padded to the batch's
    longest it spends batch x longest^2 on a batch whose lengths spread (as served
    micro-batches of sentences do). Samples sorted by length and split in up to
    :data:`MAX_BUCKETS` buckets (one per :data:`SAMPLES_PER_BUCKET` samples), each padded to its
    own longest, give the same outputs for less: the sum of samples x width^2 over the buckets.
    """
    b, n = keep.shape
    rows = torch.full((b, n), -1, dtype=torch.long, device=keep.device)
    rows[keep] = torch.arange(int(keep.sum()), device=keep.device)  # packed row of each token
    last = torch.where(keep, torch.arange(1, n + 1, device=keep.device), 0).amax(1)
    widths, order = torch.sort(last.clamp(min=1))
    most = min(MAX_BUCKETS, max(1, b // SAMPLES_PER_BUCKET))
    out, start = [], 0
    for size in bucket_sizes(widths.tolist(), most):
        members = order[start : start + size]
        start += size
        width = int(widths[start - 1])
        sub = keep[members, :width]
        out.append(
            Bucket(
                samples=size,
                width=width,
                rows=rows[members, :width][sub],
                slots=sub.reshape(-1).nonzero().squeeze(1),
                mask=torch.zeros(sub.shape).masked_fill_(~sub, float("-inf"))[:, None, None, :],
                source=rows[members, :width].reshape(-1).clamp(min=0),
            )
        )
    return out


def grid_index(groups: list[Bucket], tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two gathers between the packed rows and the buckets' grids, laid end to end: which
    packed row each grid position reads, and which grid position holds each packed row's
    attention output. None for a batch without a real token (nothing to attend to).

    One gather in and one out per layer, where scattering each bucket on its own takes two of
    each per bucket: fewer, larger memory operations, which measured faster per layer on the
    CPU.
    """
    if tokens == 0:
        return None
    source = torch.cat([g.source for g in groups])
    back = torch.empty(tokens, dtype=torch.long, device=source.device)
    start = 0
    for g in groups:
        back[g.rows] = start + g.slots
        start += g.samples * g.width
    return source, back
