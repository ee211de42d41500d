"""Weight sparsity after structural pruning: 2:4 for GPU speed, unstructured for stored size.

- ``2:4`` (the gpu profile): in every group of four consecutive input weights of a Linear row
  the two least important are zero, the pattern Ampere-and-later tensor cores skip
  (``torch.sparse.to_sparse_semi_structured``): half the weight bytes, and on large enough
  matmuls fewer cycles. Only layers whose shape the sparse kernels take are masked.
- ``unstructured`` (the edge profile, a size budget): the least important weights of every
  Linear, Conv and Embedding matrix are zero, with one density for all of them, chosen so that
  the variant as *stored* (nonzero values plus a bitmask, :mod:`compression.forms.compact`) meets the
  profile's ``target_size_ratio`` of the original's bytes. Dense kernels compute the same; this
  step buys size, not speed.

Importance is weight magnitude, scaled by the RMS of the weight's input channel on calibration
data where that is known (Wanda, arXiv:2306.11695: a large weight on a silent input matters
little); each output row keeps the same share. Both steps are candidates like any other: the
search measures them and keeps one only within budget (2:4 also only when measurably faster
than the same variant dense).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from compression.forms import compact
from compression.recovery import rebuild
from compression.structure import importance

SPARSE_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
# Shapes every 2:4 backend takes in half precision (CUTLASS: rows % 32, cols % 64).
SEMI_ROWS, SEMI_COLS = 32, 64
# A 2:4 variant must beat the same variant dense by this much to be kept (timing noise).
SEMI_MIN_GAIN = 0.95


# ---- masks and the refit ----------------------------------------------------------------------


def mask_2to4(score: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the two highest-scoring of every four consecutive columns of each row."""
    rows, cols = score.shape
    if cols % 4:
        raise ValueError(f"2:4 needs a multiple of 4 columns, got {cols}")
    groups = score.reshape(rows, cols // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def is_2to4(weight: torch.Tensor) -> bool:
    """Whether at most two of every four consecutive weights of each row are nonzero."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def row_mask(score: torch.Tensor, density: float) -> torch.Tensor:
    """Bool mask keeping the ``density`` share of highest scores in every row (at least one)."""
    keep = min(score.shape[1], max(1, math.ceil(density * score.shape[1])))
    idx = score.topk(keep, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)


def refit_rows(
    w: torch.Tensor, mask: torch.Tensor, gram: torch.Tensor, ridge: float = 1e-2, chunk: int = 64
) -> torch.Tensor:
    """Kept weights of each row re-solved so the row's output stays closest to the dense one.

    Row r keeps columns S: min_v E[(x_S v - x w_r)^2] + lam ||v||^2 gives
    (G_SS + lam I) v = (G w_r)_S with G = E[x x^T] of the layer's inputs (the least-squares
    step of SparseGPT, arXiv:2301.00774, in one shot per row). Rows keep equally many columns
    (both masks above do), so the solves run batched; returns the new weights, zero off-mask.
    """
    rows, cols = w.shape
    k = int(mask[0].sum())
    if not bool((mask.sum(1) == k).all()):
        raise ValueError("refit_rows needs the same number of kept columns in every row")
    g = gram.to(device=w.device, dtype=torch.float64)
    w64 = w.to(torch.float64)
    lam = ridge * g.diagonal().mean().clamp_min(1e-12)
    idx = mask.nonzero()[:, 1].reshape(rows, k)  # kept columns per row, ascending
    out = torch.zeros_like(w64)
    for r in range(0, rows, chunk):
        sel = idx[r : r + chunk]
        gss = g[sel[:, :, None], sel[:, None, :]]
        gss.diagonal(dim1=1, dim2=2).add_(lam)
        rhs = torch.gather(w64[r : r + chunk] @ g, 1, sel)
        out[r : r + chunk].scatter_(1, sel, _spd_solve(gss, rhs))
    return out


def _spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve a batch of ridge-regularised (symmetric positive definite) systems a x = b.

    Cholesky first; a system it cannot factor (numerically indefinite) is solved by least
    squares instead of failing the whole batch.
    """
    chol, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        x[bad] = torch.linalg.lstsq(a[bad], b[bad].unsqueeze(-1)).solution.squeeze(-1)
    return x


def thin(
    model: nn.Module,
    names: list[str],
    masker: Callable[[torch.Tensor], torch.Tensor],
    batch=None,
    ridge: float = 1e-2,
) -> nn.Module:
    """A copy of ``model`` whose named layers keep only what ``masker(scores)`` keeps.

    Scores are |w| times the RMS of each weight's input on ``batch`` (Wanda); kept weights are
    refit by :func:`refit_rows`, and BatchNorm statistics are re-estimated. Without a batch:
    plain magnitude, no refit. Removed weights are +0.0 exactly (a product would leave -0.0).
    """
    layers = [n for n in names if not isinstance(model.get_submodule(n), nn.Embedding)]
    grams = importance.input_grams(model, layers, batch) if batch is not None and layers else {}
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name in names:
            layer = out.get_submodule(name)
            w = layer.weight.detach()
            rows = w.reshape(w.shape[0], -1).to(torch.float64)
            g = grams.get(name)
            if g is None or g.shape[0] != rows.shape[1]:
                mask = masker(rows.abs())
                new = rows
            else:
                mask = masker(rows.abs() * g.diagonal().clamp_min(0).sqrt().to(rows.device))
                new = refit_rows(rows, mask, g, ridge)
            new = new.masked_fill(~mask, 0.0)
            layer.weight.copy_(new.reshape(w.shape).to(w.dtype))
    if batch is not None:
        rebuild.recalibrate_bn(out, batch)
    return out.eval()


# ---- 2:4 -------------------------------------------------------------------------------------


def semi_structured_layers(model: nn.Module) -> list[str]:
    """Linear layers whose weight shape the 2:4 kernels take (in half precision)."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and m.out_features % SEMI_ROWS == 0
        and m.in_features % SEMI_COLS == 0
    ]


def prune_2to4(model: nn.Module, batch=None, ridge: float = 1e-2) -> tuple[nn.Module, int]:
    """A copy of ``model`` with a 2:4 pattern on every eligible Linear; (copy, layers masked)."""
    names = semi_structured_layers(model)
    return thin(model, names, mask_2to4, batch, ridge), len(names)


def to_semi_structured(model: nn.Module) -> int:
    """Swap the 2:4-sparse half-precision CUDA Linear weights of ``model`` for semi-structured
    sparse tensors in place; returns how many were converted (layers the backend refuses stay
    dense, with identical results)."""
    from torch.sparse import to_sparse_semi_structured

    converted = 0
    for _, layer in model.named_modules():
        w = getattr(layer, "weight", None)
        if not isinstance(layer, nn.Linear) or w is None or not w.is_cuda:
            continue
        if w.dtype not in (torch.float16, torch.bfloat16) or not is_2to4(w):
            continue
        try:
            sparse = to_sparse_semi_structured(w.detach().contiguous())
        except (RuntimeError, ValueError):
            continue
        layer.weight = nn.Parameter(sparse, requires_grad=False)
        converted += 1
    return converted


# ---- unstructured ------------------------------------------------------------------------------


def sparse_layers(model: nn.Module) -> list[str]:
    """Layers whose weight matrix unstructured pruning thins (Linear, Conv, Embedding)."""
    return [n for n, m in model.named_modules() if isinstance(m, SPARSE_KINDS)]


def sparsify(model: nn.Module, density: float, batch=None, ridge: float = 1e-2) -> nn.Module:
    """A copy of ``model`` keeping the ``density`` share of each weight row (see :func:`thin`)."""
    return thin(model, sparse_layers(model), lambda s: row_mask(s, density), batch, ridge)


def _stored(numel: int, kept: int, itemsize: int) -> int:
    """Bytes :mod:`compression.forms.compact` writes for a tensor with ``kept`` nonzero elements."""
    dense = numel * itemsize
    packed = kept * itemsize + math.ceil(numel / 8)
    small = numel < 64 or packed > (1 - compact.MIN_SAVING) * dense
    return dense if small else packed


def stored_bytes_at(model: nn.Module, density: float) -> int:
    """Bytes the compact store of ``sparsify(model, density)`` takes, computed, not built."""
    shapes = {f"{n}.weight" for n in sparse_layers(model)}
    total = 0
    for key, t in model.state_dict().items():
        if key in shapes:
            rows, cols = t.shape[0], t.numel() // t.shape[0]
            kept = rows * min(cols, max(1, math.ceil(density * cols)))
            total += _stored(t.numel(), kept, t.element_size())
        else:
            total += t.numel() * t.element_size()
    return total


def density_for(model: nn.Module, target_bytes: float) -> float | None:
    """The largest density whose compact store of ``model`` fits ``target_bytes`` (None: none
    fits; 1.0: the model fits as it is)."""
    if stored_bytes_at(model, 1.0) <= target_bytes:
        return 1.0
    lo, hi = 0.0, 1.0
    if stored_bytes_at(model, 1e-9) > target_bytes:
        return None
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if stored_bytes_at(model, mid) <= target_bytes else (lo, mid)
    return lo


def nonzero_params(model: nn.Module) -> int:
    """Parameters with a nonzero value (what a compact store keeps)."""
    return sum(int((p != 0).sum()) for p in model.parameters())
