"""Model inputs and outputs in the three shapes ``forward`` takes: a tensor, a tuple, a dict.

The engine never assumes one model family: it calls models through :func:`call`, reads the
main output through :func:`main_output`, and finds per-token masks (Hugging Face
``attention_mask``) through :func:`token_mask`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from compression.core.errors import DataError

Batch = torch.Tensor | tuple | list | dict


def call(model: nn.Module, batch: Batch) -> Any:
    """Call ``model`` the way ``batch`` says: ``m(t)``, ``m(*tuple)`` or ``m(**dict)``."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, tuple | list):
        return model(*batch)
    return model(batch)


def main_output(out: Any) -> torch.Tensor:
    """The tensor that stands for a model's answer (logits, hidden states or the tensor itself)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, dict) and out:
        return main_output(next(iter(out.values())))
    if isinstance(out, tuple | list) and out:
        return main_output(out[0])
    raise DataError(f"cannot find an output tensor in a {type(out).__name__}")


def token_mask(batch: Batch) -> torch.Tensor | None:
    """The ``attention_mask`` of a Hugging Face batch, else None."""
    if isinstance(batch, dict) and "attention_mask" in batch:
        return batch["attention_mask"]
    return None


def to_device(batch: Batch, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
    """Move every tensor of a batch; floating tensors also change to ``dtype`` when given."""

    def move(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device)

    if isinstance(batch, dict):
        return {k: move(v) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(move(v) for v in batch)
    return move(batch)


def batch_size(batch: Batch) -> int:
    """Number of samples in a batch (size of the first tensor's first dimension)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    raise DataError("a batch holds no tensor")


def materialize(batches: Iterable[Batch] | None, what: str, limit: int | None = None) -> list:
    """Turn an iterable of batches into a list, stopping after ``limit`` samples.

    Raises DataError when nothing arrives, so an empty file or generator fails loudly.
    """
    if batches is None:
        raise DataError(f"{what} is required: pass an iterable of model inputs")
    if isinstance(batches, torch.Tensor | dict):
        batches = [batches]
    out, seen = [], 0
    for b in batches:
        out.append(b)
        seen += batch_size(b[0] if what == "validation" and isinstance(b, tuple) else b)
        if limit is not None and seen >= limit:
            break
    if not out:
        raise DataError(f"{what} is empty: expected at least one batch of model inputs")
    return out


def check_runs(model: nn.Module, batch: Batch, what: str) -> Any:
    """Run one batch and turn a shape/dtype failure into a DataError that names the data."""
    try:
        with torch.inference_mode():
            return call(model, batch)
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        shape = describe(batch)
        raise DataError(
            f"{what} does not fit the model: a batch of {shape} failed with: {err}. "
            "Expected batches shaped like example_inputs."
        ) from None


def describe(batch: Batch) -> str:
    """A short text of a batch's shapes and dtypes for error messages."""
    if isinstance(batch, torch.Tensor):
        return f"tensor{list(batch.shape)} {str(batch.dtype).replace('torch.', '')}"
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, tuple | list):
        return "(" + ", ".join(describe(v) for v in batch) + ")"
    return type(batch).__name__


def concat(batches: list[Batch]) -> Batch:
    """One batch from many. 2-D integer tensors (token ids, masks) are right-padded with 0."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        if first.dim() == 2 and not first.is_floating_point():
            width = max(b.shape[1] for b in batches)
            batches = [nn.functional.pad(b, (0, width - b.shape[1])) for b in batches]
        return torch.cat(batches)
    if isinstance(first, dict):
        return {k: concat([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(concat([b[i] for b in batches]) for i in range(len(first)))
    raise DataError(f"cannot join batches of {type(first).__name__}")


def split(batch: Batch, size: int) -> list[Batch]:
    """Cut a batch into batches of at most ``size`` samples."""
    n = batch_size(batch)
    return [index(batch, slice(i, i + size)) for i in range(0, n, size)]


def index(batch: Batch, sel: slice | torch.Tensor) -> Batch:
    """Select samples of a batch along its first dimension."""
    if isinstance(batch, torch.Tensor):
        return batch[sel]
    if isinstance(batch, dict):
        return {k: index(v, sel) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(index(v, sel) for v in batch)
    return batch


def flat_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of a [..., C] activation, keeping only real tokens when a [B, L] mask fits."""
    if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


def conv_rows(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A conv's input as the rows its weight multiplies: one row of C*kh*kw per output pixel."""
    cols = nn.functional.unfold(
        x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride
    )
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def buckets(batch: Batch, n: int = 4) -> list[Batch]:
    """Samples of a right-padded token batch sorted by length into ``n`` parts, each cut to its
    longest sample: the forward computes the real tokens, not the padding. Other batches whole.
    """
    return [part for _, part in indexed_buckets(batch, n)]


def _right_padded(mask: torch.Tensor) -> bool:
    """Whether every sample's tokens come first and its padding after."""
    lengths = mask.sum(1)
    return bool((mask == (torch.arange(mask.shape[1]) < lengths[:, None]).to(mask.dtype)).all())


def _cut(batch: dict, mask: torch.Tensor, idx: torch.Tensor) -> dict:
    """The samples ``idx`` of a right-padded token batch, cut to the longest of them (tensors
    shaped like the mask are cut; others, e.g. pixel values, are kept whole)."""
    part = index(batch, idx)
    cut = max(1, int(mask[idx].sum(1).max()))
    shape = mask[idx].shape
    return {k: v[:, :cut] if v.dim() == 2 and v.shape == shape else v for k, v in part.items()}


def indexed_buckets(batch: Batch, n: int = 4) -> list[tuple[torch.Tensor | None, Batch]]:
    """:func:`buckets` with each part's sample indices in ``batch`` (None: the batch whole)."""
    mask = token_mask(batch)
    if mask is None or not isinstance(batch, dict) or mask.shape[0] < 2 * n:
        return [(None, batch)]
    if not _right_padded(mask):
        return [(None, batch)]
    order = torch.argsort(mask.sum(1), stable=True)
    return [(idx, _cut(batch, mask, idx)) for idx in order.chunk(n)]


def served_like(batch: Batch, n: int) -> Batch:
    """``n`` samples spread evenly over a token batch, cut to the longest of them: what a
    server's micro-batch of concurrent requests is (sentences of every length, padded to the
    longest, so a large share of the positions are padding); other
    batches: the first ``n`` samples. Deterministic, so every candidate meets the same batch."""
    mask = token_mask(batch)
    if mask is None or not isinstance(batch, dict):
        return index(batch, slice(0, n))
    total = batch_size(batch)
    idx = torch.linspace(0, total - 1, min(n, total)).round().long().unique()
    if not _right_padded(mask):
        return index(batch, idx)  # keep the width
    return _cut(batch, mask, idx)
