"""Compact storage of sparse weights in safetensors: nonzero values plus a bitmask, exact.

A tensor that is mostly zeros (unstructured weight pruning) is written as two tensors,
``<key>::values`` (its nonzero elements in row-major order, same dtype) and ``<key>::mask``
(one bit per element, packed into uint8), and its shape and dtype go into the file's metadata
under ``slimserve.sparse``. Everything else is written as is, so a dense variant's file is the
same as before and older files load unchanged.

"Nonzero" means a nonzero *bit pattern*: a stored ``-0.0`` keeps its sign, so unpacking gives
back every tensor bit for bit and a reloaded variant computes exactly what was saved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

META_KEY = "slimserve.sparse"
VALUES, MASK = "::values", "::mask"
# Pack only where it saves at least this fraction of the tensor's bytes (dense weights never do).
MIN_SAVING = 0.25
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_DTYPES = {
    str(dt).removeprefix("torch."): dt
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
}


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    """Flat bool mask of elements whose bits are not all zero."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(_BITS[flat.element_size()]) != 0


def packed_bytes(t: torch.Tensor, nonzero: int | None = None) -> int:
    """Bytes ``t`` takes in compact form: its nonzero values and one bit per element."""
    nnz = int(_nonzero(t).sum()) if nonzero is None else nonzero
    return nnz * t.element_size() + math.ceil(t.numel() / 8)


def _worth_packing(t: torch.Tensor) -> bool:
    if (
        not t.is_floating_point()
        or t.numel() < 64
        or str(t.dtype).removeprefix("torch.") not in _DTYPES
    ):
        return False
    return packed_bytes(t) <= (1 - MIN_SAVING) * t.numel() * t.element_size()


def pack(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata to write: mostly-zero float tensors as values + bitmask."""
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict] = {}
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        if not _worth_packing(t):
            tensors[key] = t
            continue
        mask = _nonzero(t)
        tensors[key + VALUES] = t.reshape(-1)[mask].clone()
        tensors[key + MASK] = torch.from_numpy(np.packbits(mask.numpy()))
        sparse[key] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    return tensors, ({META_KEY: json.dumps(sparse, sort_keys=True)} if sparse else {})


def unpack(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> dict:
    """The state :func:`pack` was given, from what it wrote."""
    sparse = json.loads((metadata or {}).get(META_KEY, "{}"))
    state = {k: v for k, v in tensors.items() if not k.endswith((VALUES, MASK))}
    for key, info in sparse.items():
        shape, dtype = info["shape"], _DTYPES[info["dtype"]]
        numel = math.prod(shape)
        bits = np.unpackbits(tensors[key + MASK].numpy(), count=numel).astype(bool)
        flat = torch.zeros(numel, dtype=dtype)
        flat[torch.from_numpy(bits)] = tensors[key + VALUES]
        state[key] = flat.reshape(shape)
    return state


def save(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``state`` to a safetensors file, sparse tensors compactly."""
    tensors, metadata = pack(state)
    save_file(tensors, str(path), metadata=metadata or None)


def load(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save` (or any plain safetensors file) into a state dict."""
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    return unpack(tensors, metadata)


def stored_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of tensor data :func:`save` writes for ``state`` (the file adds a small header)."""
    tensors, _ = pack(state)
    return sum(t.numel() * t.element_size() for t in tensors.values())
