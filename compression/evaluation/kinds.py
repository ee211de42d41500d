"""What a model's outputs are, and what its users read from them.

Without labels a variant is judged by how closely it answers like the original, and "closely"
depends on what the output is. Cosine similarity suits an embedding, whose every coordinate
matters a little; it is the wrong figure for class scores, where cosine stays high while the
top class of a few positions flips, and one flipped step of a text recogniser changes the word
its user reads. So the output kind is decided from the original's own outputs on calibration
data (:func:`detect`), and each kind has its figure, per sample (:func:`agreement_rows`):

- ``top1`` -- class scores (a classifier's logits, a token tagger's per token): the share of a
  sample's positions whose top class agrees (one position: 1 or 0);
- ``sequence`` -- class scores per position that form one answer (a CTC head's per time step):
  1 where the greedily decoded sequence is equal (repeats merged, the blank class dropped);
- ``iou`` -- a dense map (segmentation scores per pixel, a one-channel score map): the
  intersection over union of the argmax (or thresholded) maps, averaged over the classes present;
- ``cosine`` -- anything else, read as an embedding (:func:`compression.evaluation.metrics.embed`).

Class scores are told from hidden states by how the original uses them: its softmax's top
probability averages at least halfway from uniform to certain (and at least 0.5), and no one
class is the top on nearly every position (a hidden state with one huge coordinate would pass
the first test alone). Digits classifiers average 0.97-0.98 there, MiniLM's hidden states 0.025.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compression.core.inputs import Batch, token_mask

KINDS = ("top1", "sequence", "iou", "cosine")
ANSWERED = ("top1", "sequence", "iou")  # the kinds compared by what a user reads (answers)
# Class scores: one class the top on more than this share of positions reads as a hidden state
# with an outlier coordinate, not as scores (a CTC blank is the top on most steps, not all).
MAX_TOP_SHARE = 0.95
MIN_ROWS_FOR_SHARE = 20  # fewer positions than this: the share test does not apply


@dataclass(frozen=True)
class Reading:
    """How a model's main output is read: the metric, why it was chosen, and its settings."""

    metric: str  # one of KINDS
    why: str
    blank: int | None = None  # sequence: the class dropped when decoding (the most common top)
    threshold: float | None = None  # a one-channel map: scores above it are the mask

    def to_dict(self) -> dict:
        out = {"metric": self.metric, "why": self.why}
        if self.blank is not None:
            out["blank"] = self.blank
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out


def _probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Rows of probabilities from class scores: kept where they already are probabilities
    (non-negative, summing to 1), a softmax otherwise (logits and log-probabilities alike)."""
    if scores.min() >= 0 and torch.allclose(scores.sum(-1), torch.ones(()), atol=1e-3):
        return scores
    return scores.softmax(-1)


def class_scores(rows: torch.Tensor) -> tuple[bool, str]:
    """Whether ``rows`` ([N, C], one position per row) are class scores, and the figures."""
    n, c = rows.shape
    if c < 2 or n == 0:
        return False, f"{c} value(s) per position"
    top = float(_probabilities(rows.float()).max(-1).values.mean())
    need = max(0.5, (1.0 + 1.0 / c) / 2)
    share = float(rows.argmax(-1).bincount(minlength=c).max()) / n
    figures = f"top softmax probability {top:.3f} over {n} positions of {c} classes"
    if top < need:
        return False, f"{figures} (class scores need {need:.3f})"
    if n >= MIN_ROWS_FOR_SHARE and share > MAX_TOP_SHARE:
        return False, f"{figures}, but one class is the top on {share:.1%} of them"
    return True, figures


def _rows(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The positions of ``out`` ([B, C] or [B, T, C]) as rows, padding tokens left out."""
    mask = token_mask(batch)
    if out.dim() == 3 and mask is not None and mask.shape == out.shape[:2]:
        return out[mask.to(out.device) > 0]
    return out.reshape(-1, out.shape[-1])


def detect(out: torch.Tensor, batch: Batch) -> Reading:
    """The reading of the original's main output ``out`` on a calibration ``batch``."""
    out = out.detach().float()
    if out.dim() == 4 and out.shape[1] == 1:
        threshold = 0.5 if out.min() >= 0 and out.max() <= 1 else 0.0
        return Reading(
            "iou",
            f"a one-channel map {list(out.shape[1:])}: read as the mask of scores above "
            f"{threshold:g}, compared by intersection over union",
            threshold=threshold,
        )
    if out.dim() == 4:
        scores, figures = class_scores(out.movedim(1, -1).reshape(-1, out.shape[1]))
        if scores:
            return Reading(
                "iou",
                f"class scores per pixel {list(out.shape[1:])} ({figures}): the argmax maps "
                "compared by intersection over union",
            )
        return Reading("cosine", f"a feature map {list(out.shape[1:])} ({figures}): cosine")
    if out.dim() in (2, 3):
        scores, figures = class_scores(_rows(out, batch))
        if scores and out.dim() == 2:
            return Reading("top1", f"class scores per sample ({figures}): top-1 agreement")
        if scores and token_mask(batch) is not None:
            return Reading(
                "top1",
                f"class scores per token ({figures}): top-1 agreement per real token",
            )
        if scores:
            blank = int(_rows(out, batch).argmax(-1).bincount().argmax())
            return Reading(
                "sequence",
                f"class scores per step of a sequence ({figures}): the greedily decoded "
                f"sequence (repeats merged, class {blank}, the most common top, dropped as "
                "blank) must be equal",
                blank=blank,
            )
        return Reading("cosine", f"an embedding ({figures}): cosine")
    return Reading("cosine", f"an output of shape {list(out.shape[1:])}: cosine")


def for_metric(metric: str, out: torch.Tensor, batch: Batch) -> Reading:
    """The reading for a metric the user named: its settings from the original's outputs."""
    found = detect(out, batch)
    if found.metric == metric:
        return found
    out = out.detach().float()
    if metric == "sequence":
        blank = int(_rows(out, batch).argmax(-1).bincount().argmax())
        return Reading("sequence", f"named by the user (blank: class {blank})", blank=blank)
    if metric == "iou" and out.dim() == 4 and out.shape[1] == 1:
        threshold = 0.5 if out.min() >= 0 and out.max() <= 1 else 0.0
        return Reading("iou", "named by the user", threshold=threshold)
    return Reading(metric, f"named by the user (the outputs read as: {found.why})")


def answers(out: torch.Tensor, batch: Batch, reading: Reading) -> torch.Tensor:
    """What a user reads from ``out``, per sample: top classes ([B] or [B, T], -1 at padding),
    decoded sequences ([B, T], -1 after the end) or maps ([B, H, W])."""
    out = out.detach()
    if reading.metric == "iou":
        if out.shape[1] == 1:
            return (out[:, 0].float() > reading.threshold).long()
        return out.argmax(1)
    top = out.argmax(-1)
    mask = token_mask(batch)
    if top.dim() == 2 and mask is not None and mask.shape == top.shape:
        top = top.masked_fill(mask.to(top.device) == 0, -1)
    if reading.metric != "sequence" or top.dim() != 2:
        return top
    keep = top != reading.blank
    keep[:, 1:] &= top[:, 1:] != top[:, :-1]  # a repeat merges into the step before it
    decoded = torch.full_like(top, -1)
    for i in range(top.shape[0]):
        row = top[i][keep[i]]
        decoded[i, : len(row)] = row
    return decoded


def agreement_rows(got: torch.Tensor, want: torch.Tensor, reading: Reading) -> torch.Tensor:
    """Per sample, how far a variant's answers ``got`` agree with the original's ``want``."""
    want = want.to(got.device)
    if reading.metric == "sequence":
        width = max(got.shape[1], want.shape[1])
        got, want = _pad(got, width), _pad(want, width)
        return (got == want).all(1).double()
    if reading.metric == "iou":
        binary = reading.threshold is not None  # a one-channel map: its foreground
        return _iou(got.reshape(len(got), -1), want.reshape(len(want), -1), binary)
    if got.dim() == 1:
        return (got == want).double()
    width = max(got.shape[1], want.shape[1])
    got, want = _pad(got, width), _pad(want, width)
    real = want >= 0
    same = ((got == want) & real).sum(1).double()
    return same / real.sum(1).clamp_min(1).double()


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1)


def _iou(got: torch.Tensor, want: torch.Tensor, binary: bool) -> torch.Tensor:
    """Mean intersection over union per sample, over the classes present in either map; a
    ``binary`` mask counts its foreground only (two empty masks agree: 1.0)."""
    classes = int(max(got.max(), want.max())) + 1
    kinds = [1] if binary else range(classes)
    inter = torch.zeros(len(got), dtype=torch.float64)
    present = torch.zeros(len(got), dtype=torch.float64)
    for k in kinds:
        a, b = got == k, want == k
        union = (a | b).sum(1).double()
        seen = union > 0
        inter += torch.where(seen, (a & b).sum(1).double() / union.clamp_min(1), 0.0)
        present += seen.double()
    return torch.where(present > 0, inter / present.clamp_min(1), torch.ones_like(inter))
