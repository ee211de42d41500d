"""Quality metrics on validation data: accuracy and F1 (scikit-learn), cosine fidelity.

``cosine`` compares a model's embedding of each sample with the original model's: for token
outputs with an ``attention_mask`` the embedding is the mean over real tokens (how sentence
encoders such as all-MiniLM-L6-v2 pool), otherwise the flattened output.

``perplexity`` is for causal language models: next-token perplexity on the validation text,
reported as a ratio, the original's perplexity over the model's (1.0 for the original, 0.95
for a variant 5% more perplexed), so that higher is better like every other metric.

Embeddings stay on the model's device (CUDA included); cosine and neighbour recall compute
there, and only what goes to scikit-learn or a callable metric is copied to the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from torch import nn

from compression.core.errors import DataError
from compression.core.inputs import (
    Batch,
    batch_size,
    call,
    indexed_buckets,
    main_output,
    token_mask,
)
from compression.evaluation import kinds

METRICS = ("accuracy", "f1", "cosine", "perplexity", *kinds.ANSWERED)
LABELLED = ("accuracy", "f1")
Metric = str | Callable[[np.ndarray, np.ndarray], float]


def embed(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    """One vector per sample: masked mean over tokens for [B, L, H] outputs, else flatten."""
    out = out.float()
    mask = token_mask(batch)
    if mask is not None and out.dim() == 3:
        m = mask.unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp_min(1.0)
    return out.reshape(out.shape[0], -1)


def outputs(model: nn.Module, validation: list) -> list[torch.Tensor]:
    """Per-sample embeddings (see :func:`embed`) of every validation batch."""
    return forward(model, validation)[0]


def forward(
    model: nn.Module, validation: list, reading: kinds.Reading | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per-sample embeddings (:func:`embed`) of every validation batch and, with a ``reading``,
    what a user reads from each (:func:`compression.evaluation.kinds.answers`; else None).

    A padded token batch runs as length buckets (:func:`compression.core.inputs.indexed_buckets`),
    its rows put back in the batch's order: the same figures, without the padding's compute
    (a batch of sentences is padded to its longest, far past its typical length).
    """
    embedded, read = [], []
    with torch.inference_mode():
        for inputs, _ in validation:
            parts = indexed_buckets(inputs)
            if parts[0][0] is not None:
                got = [(idx, main_output(call(model, part)), part) for idx, part in parts]
                rows = [(idx, embed(out, part)) for idx, out, part in got]
                if all(r.shape[1:] == rows[0][1].shape[1:] for _, r in rows):
                    embedded.append(_in_order(rows, batch_size(inputs)))
                    if reading is not None:
                        ans = [(idx, kinds.answers(out, p, reading)) for idx, out, p in got]
                        read.append(_in_order(ans, batch_size(inputs), fill=-1))
                    continue
            out = main_output(call(model, inputs))  # one part, or a width-dependent output
            embedded.append(embed(out, inputs))
            if reading is not None:
                read.append(kinds.answers(out, inputs, reading))
    return embedded, (read if reading is not None else None)


def _in_order(
    rows: list[tuple[torch.Tensor, torch.Tensor]], n: int, fill: int | None = None
) -> torch.Tensor:
    """Bucketed rows back in their batch's order; with ``fill``, rows of several widths are
    padded on the right with it (answers per token)."""
    if fill is not None:
        width = max(r.shape[1] for _, r in rows) if rows[0][1].dim() > 1 else None
        if width is not None:
            rows = [(i, nn.functional.pad(r, (0, width - r.shape[1]), value=fill)) for i, r in rows]
    first = rows[0][1]
    out = first.new_empty((n, *first.shape[1:]))
    for idx, r in rows:
        out[idx.to(out.device)] = r
    return out


def metric_name(metric: Metric) -> str:
    """How a metric is named in reports (a callable by its ``__name__``)."""
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def has_labels(validation: list | None) -> bool:
    return bool(validation) and all(t is not None for _, t in validation)


def resolve_metric(metric: Metric, validation: list | None) -> Metric:
    """``auto`` -> accuracy with labels, else ``auto`` still (the outputs' kind decides, see
    :func:`reading`); names are checked against the data."""
    if callable(metric):
        return metric
    if metric == "auto":
        return "accuracy" if has_labels(validation) else "auto"
    if metric not in METRICS:
        raise DataError(
            f"unknown metric {metric!r}: expected one of {METRICS}, 'auto' or a callable"
        )
    if metric == "perplexity" and not isinstance((validation or [(None, None)])[0][0], dict):
        raise DataError("metric 'perplexity' needs validation batches of token ids (input_ids)")
    if metric in LABELLED and not has_labels(validation):
        raise DataError(f"metric {metric!r} needs validation pairs (inputs, labels) with labels")
    return metric


def reading(metric: Metric, out: torch.Tensor, batch: Batch) -> kinds.Reading | None:
    """How the original's main output ``out`` (on a calibration ``batch``) is read for
    ``metric``: by its kind for ``auto``; a labelled metric reads classes, whose disagreement
    with the original bounds its drop (see :mod:`compression.search.verify`); None for
    perplexity."""
    if metric == "perplexity":
        return None
    if metric == "auto":
        return kinds.detect(out, batch)
    if metric in kinds.ANSWERED:
        return kinds.for_metric(metric, out, batch)
    if metric == "cosine":
        return kinds.Reading("cosine", "named by the user")
    if out.dim() == 2 and out.shape[1] >= 2:  # labelled: scores per sample
        return kinds.Reading("top1", "the labelled metric's classes (argmax of the scores)")
    return None


def is_causal_lm(model: nn.Module, batch: Batch) -> bool:
    """A generative language model called with token ids (perplexity is its natural metric)."""
    can_generate = getattr(model, "can_generate", None)
    return (
        isinstance(batch, dict)
        and "input_ids" in batch
        and callable(can_generate)
        and bool(can_generate())
    )


def perplexity(model: nn.Module, validation: list) -> float:
    """Next-token perplexity of ``model`` on the validation batches (padding excluded)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for inputs, _ in validation:
            logits = main_output(call(model, inputs)).float()[:, :-1]
            target = inputs["input_ids"][:, 1:]
            mask = token_mask(inputs)
            keep = torch.ones_like(target, dtype=torch.bool) if mask is None else mask[:, 1:] > 0
            nll = nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            total += float(nll[keep].sum())
            count += int(keep.sum())
    if count == 0:
        raise DataError("perplexity needs validation text of at least 2 tokens per sample")
    return float(np.exp(total / count))


def cosine_rows(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Cosine similarity between matching rows of two lists of embeddings, one per row."""
    x = torch.cat(a)
    y = torch.cat(b).to(x.device)
    return nn.functional.cosine_similarity(x, y, dim=1)


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Mean cosine similarity between matching rows of two lists of embeddings."""
    return float(cosine_rows(a, b).mean())


def neighbour_recall(
    model_out: list[torch.Tensor], reference_out: list[torch.Tensor], k: int = 10
) -> float | None:
    """Mean overlap of each sample's ``k`` nearest neighbours (cosine, among all validation
    samples, itself excluded) under the model and under the original; None with <= ``k`` samples.

    Cosine fidelity can stay high while the embedding space folds: retrieval cares whether the
    same sentences stay closest, and this measures exactly that.
    """
    hits = neighbour_hits(model_out, reference_out, k)
    return None if hits is None else float(hits.mean())


def neighbour_hits(
    model_out: list[torch.Tensor], reference_out: list[torch.Tensor], k: int = 10
) -> torch.Tensor | None:
    """Per sample, the share of its ``k`` nearest neighbours that the model keeps (see
    :func:`neighbour_recall`, their mean); None with <= ``k`` samples."""

    def neighbours(embeddings: list[torch.Tensor]) -> torch.Tensor:
        e = nn.functional.normalize(torch.cat(embeddings).float(), dim=1)
        sims = e @ e.T
        sims.fill_diagonal_(float("-inf"))
        return sims.topk(k, dim=1).indices

    if sum(len(e) for e in reference_out) <= k:
        return None
    a, b = neighbours(model_out).tolist(), neighbours(reference_out).tolist()
    hits = [len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]
    return torch.tensor(hits, dtype=torch.float64)


def score(
    metric: Metric,
    model_out: list[torch.Tensor],
    validation: list,
    reference_out: list[torch.Tensor],
) -> float:
    """The metric of a model's validation outputs (cosine is against ``reference_out``)."""
    if metric == "cosine":
        return cosine(model_out, reference_out)
    if metric in kinds.ANSWERED:
        raise ValueError(f"{metric} is measured on answers (compression.search.splits)")
    labels = np.concatenate([_numpy(t) for _, t in validation])
    scores = torch.cat(model_out).cpu()
    if callable(metric):
        return float(metric(scores.numpy(), labels))
    pred = scores.argmax(1).numpy()
    if metric == "accuracy":
        return float(accuracy_score(labels, pred))
    return float(f1_score(labels, pred, average="macro"))


def _numpy(labels) -> np.ndarray:
    """Labels as a NumPy array, wherever they live (a CUDA tensor, a list, an array)."""
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 (scikit-learn) of class scores."""
    pred = np.asarray(scores).argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, pred, average="macro", zero_division=0
    )
    return {
        "accuracy": round(float(accuracy_score(labels, pred)), 6),
        "macro_f1": round(float(f1), 6),
        "precision": round(float(precision), 6),
        "recall": round(float(recall), 6),
    }
