"""What the catalog hands out: a :class:`ModelBundle` and the batches of its data.

The bottom of the catalog: every way to build a bundle (``sources``, ``hf``, ``tasks``) imports
this module, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.api import compress
from compression.core.errors import DataError

MAX_TOKENS = 128
# Calibration runs all sentences as one padded batch; 64 tokens covers 97% of the built-in
# sentences and halves the padding the longest few would cost.
CALIBRATION_TOKENS = 64


@dataclass
class ModelBundle:
    """A model with the data and conventions needed to compress and serve it."""

    name: str
    source: str
    factory: Callable[[], nn.Module]
    example_inputs: Any
    calibration: list
    validation: list | None
    metric: str
    task: str  # "classification" | "embedding"
    tokenizer: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def is_text(self) -> bool:
        return self.tokenizer is not None

    def compress(self, profile, **kwargs):
        """:func:`compression.compress` of a fresh copy with this bundle's data and metric.

        ``kwargs`` go to ``compress`` and override the bundle's (e.g. ``calibration=``,
        ``progress=``)."""
        options = {
            "example_inputs": self.example_inputs,
            "calibration": self.calibration,
            "validation": self.validation,
            "metric": self.metric,
            "source": self.source,
        }
        return compress(self.factory(), profile, **{**options, **kwargs})

    def tokenize(
        self, sentences: list[str], max_length: int = MAX_TOKENS
    ) -> dict[str, torch.Tensor]:
        """Tokenize sentences into the model's dict input (text models only)."""
        enc = self.tokenizer(
            sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def chunks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``x`` in batches of ``size`` (the last one shorter)."""
    return [x[i : i + size] for i in range(0, len(x), size)]


def set_text_data(
    bundle: ModelBundle, calibration: list[str], validation: list[str] | None
) -> None:
    """Replace a text bundle's calibration (and validation) sentences; batches of 32."""
    bundle.calibration = [
        bundle.tokenize(calibration[i : i + 32], CALIBRATION_TOKENS)
        for i in range(0, len(calibration), 32)
    ]
    bundle.example_inputs = bundle.tokenize(calibration[:8])
    if validation is not None:
        bundle.validation = [
            (bundle.tokenize(validation[i : i + 32]), None) for i in range(0, len(validation), 32)
        ]


def load_array_batches(path: str, what: str, with_labels: bool) -> list:
    """Read ``.npy`` (inputs) or ``.npz`` (arrays ``x`` and, for validation, ``y``) into batches."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {what} file {path}: {err}. Expected .npy or .npz") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        if "x" not in data:
            raise DataError(f"{path}: expected an array named 'x' (and 'y' for labels)")
        x, y = data["x"], data.get("y")
    else:
        x, y = data, None
    if len(x) == 0:
        raise DataError(f"{path} holds no samples: expected at least one")
    xt = torch.from_numpy(np.ascontiguousarray(x)).float()
    if not with_labels:
        return chunks(xt, 64)
    yt = torch.from_numpy(y).long() if y is not None else None
    return [
        (xb, None if yt is None else yt[i * 128 : (i + 1) * 128])
        for i, xb in enumerate(chunks(xt, 128))
    ]
