"""``compress()``: the engine's one door.

A model goes through :mod:`compression.pipeline`; a model with a labelled task
(``task=``) gets its classification head first (:mod:`compression.task`), which then goes
through the same pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from torch import nn

from compression.core.inputs import Batch
from compression.evaluation import metrics
from compression.output.variant import CompressedModel
from compression.pipeline import Progress, compress_model
from compression.profiles import DeviceProfile
from compression.task import Task, compress_task


def compress(
    model: nn.Module,
    profile: str | Path | DeviceProfile,
    *,
    example_inputs: Batch | None = None,
    calibration: Iterable[Batch] | None = None,
    validation: Iterable[tuple[Batch, object]] | None = None,
    metric: metrics.Metric = "auto",
    source: str | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    task: Task | None = None,
) -> CompressedModel:
    """Prune, rebuild and verify a smaller variant of ``model`` for a device profile.

    ``model`` is never mutated. ``calibration`` yields model inputs (no labels); ``validation``
    yields ``(inputs, labels)`` pairs, labels may be None for fidelity-only checks; without it,
    fidelity to the original is measured on the calibration inputs. ``source`` (e.g.
    ``"digits-cnn"``) is recorded in the plan so a catalog can rebuild the model for
    :func:`load_variant`.

    >>> variant = compress(model, "cpu", example_inputs=x[:8], calibration=[x], validation=[(x, y)])
    >>> variant.report.accepted, variant.report.speedup  # doctest: +SKIP
    (True, 3.1)

    With ``task=`` (a :class:`compression.task.Task`: labelled training batches and class
    names) a classification head is trained on ``model`` first and the task model is
    compressed against the labels (see :mod:`compression.task`); ``calibration`` and
    ``example_inputs`` then default to the task's training inputs.
    """
    if task is not None:
        return compress_task(
            model,
            profile,
            task,
            example_inputs=example_inputs,
            calibration=calibration,
            validation=validation,
            metric="accuracy" if metric == "auto" else metric,
            source=source,
            progress=progress,
            should_stop=should_stop,
        )
    return compress_model(
        model,
        profile,
        example_inputs=example_inputs,
        calibration=calibration,
        validation=validation,
        metric=metric,
        source=source,
        progress=progress,
        should_stop=should_stop,
    )
