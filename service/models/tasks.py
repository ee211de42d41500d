"""Task models in the catalog: ``slimserve compress --task`` writes them, ``task:DIR`` serves them.

A task directory holds the compressed variant (``weights.safetensors``, ``plan.json`` with a
``task`` entry, ``report.json``) and what rebuilds the uncompressed task model and its data::

    task.json              {"name", "encoder": "minilm", "modality": "text"|"image", "labels", ...}
    head.safetensors       the trained head of the uncompressed task model
    train.tsv / .npz       the labelled training data (calibration of later jobs)
    validation.tsv / .npz  the labelled validation data (accuracy budget of later jobs)

The service serves ``task:DIR`` like any model: the uncompressed task model is its original,
the variant in the directory is adopted at start, and its own jobs verify against the labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from compression.core.errors import DataError, ModelSourceError
from compression.task import Task, TaskModel, rebuild_task_model, task_spec
from service.models import taskdata
from service.models.bundle import CALIBRATION_TOKENS, ModelBundle

TASK_FILE = "task.json"
BUILTIN_TASKS = {
    "python-topics": "which part of Python a help-topic sentence documents (5 classes; text)",
    "digits-parity": "whether a scikit-learn digit is even or odd (2 classes; images)",
}


def read_examples(bundle: ModelBundle, spec: str) -> list[tuple]:
    """(label, item) pairs from a built-in task name or a file fitting the model's modality."""
    if spec == "python-topics":
        return taskdata.topic_examples()
    if spec == "digits-parity":
        train, validation = taskdata.digits_parity()
        return train + validation
    if bundle.is_text:
        return taskdata.read_labelled_text(spec)
    return taskdata.read_labelled_arrays(spec)


def labelled_batches(
    bundle: ModelBundle, examples: list[tuple], names: list[str], size: int = 32
) -> list[tuple]:
    """(inputs, label ids) batches for the model: tokenized sentences or stacked arrays."""
    ids = {n: i for i, n in enumerate(names)}
    batches = []
    for i in range(0, len(examples), size):
        part = examples[i : i + size]
        y = torch.tensor([ids[label] for label, _ in part])
        if bundle.is_text:
            x = bundle.tokenize([item for _, item in part], CALIBRATION_TOKENS)
        else:
            x = _image_batch(bundle, [item for _, item in part])
        batches.append((x, y))
    return batches


def _image_batch(bundle: ModelBundle, items: list) -> torch.Tensor:
    shape = tuple(bundle.extra.get("input_shape") or ())
    x = torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in items]))
    if shape and tuple(x.shape[1:]) != shape:
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise DataError(
                f"labelled inputs of shape {list(x.shape[1:])}: {bundle.name} expects {list(shape)}"
            )
        x = x.reshape(len(x), *shape)
    return x


def make_task(
    bundle: ModelBundle, train_spec: str, validation_spec: str | None, **options
) -> tuple[Task, list, list[tuple], list[tuple]]:
    """The task, labelled validation batches, and the raw (label, item) train/validation pairs.

    Without ``validation_spec`` (and for built-in tasks) a stratified 30 % is held out.
    """
    examples = read_examples(bundle, train_spec)
    if validation_spec is None:
        train, validation = taskdata.stratified_split(examples)
    else:
        train, validation = examples, read_examples(bundle, validation_spec)
    names = taskdata.label_names(train, validation)
    task = Task(train=labelled_batches(bundle, train, names), labels=names, **options)
    return task, labelled_batches(bundle, validation, names), train, validation


def write_task_dir(
    out: Path,
    bundle: ModelBundle,
    task_model: TaskModel,
    labels: list[str],
    train: list[tuple],
    validation: list[tuple],
    name: str | None = None,
) -> None:
    """Write what ``task:DIR`` needs beside a saved variant (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    head = {k: v.detach().contiguous() for k, v in task_model.head.state_dict().items()}
    save_file(head, out / "head.safetensors")
    modality = "text" if bundle.is_text else "image"
    for part, examples in (("train", train), ("validation", validation)):
        if modality == "text":
            lines = [f"{label}\t{' '.join(str(s).split())}" for label, s in examples]
            (out / f"{part}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            x = np.stack([np.asarray(a, dtype=np.float32) for _, a in examples])
            y = np.array([label for label, _ in examples])
            np.savez(out / f"{part}.npz", x=x, y=y)
    meta = {
        "name": name or f"{bundle.name}-task",
        "encoder": bundle.source,
        "modality": modality,
        **task_spec(task_model, labels),
        "summary": task_model.summary,
    }
    (out / TASK_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def task_bundle(source: str, resolve: Callable[[str], ModelBundle]) -> ModelBundle:
    """The bundle of ``task:DIR``: the uncompressed task model with its labelled data.

    ``resolve`` builds the encoder the task directory names (``service.models.sources.resolve``,
    which calls this function for ``task:`` sources: passed in, not imported, so the catalog's
    modules import one way)."""
    directory = Path(source[len("task:") :]).expanduser()
    try:
        meta = json.loads((directory / TASK_FILE).read_text())
    except FileNotFoundError:
        raise ModelSourceError(
            f"{source}: {directory} has no {TASK_FILE}; expected a directory written by "
            "`slimserve compress --task classify ... --out DIR`"
        ) from None
    except json.JSONDecodeError as err:
        raise ModelSourceError(f"{source}: {TASK_FILE} is corrupted: {err}") from None
    encoder = resolve(meta["encoder"])
    head_state = load_file(directory / "head.safetensors")
    labels = list(meta["labels"])

    def factory() -> TaskModel:
        model = rebuild_task_model(encoder.factory(), meta)
        model.head.load_state_dict(head_state)
        return model.eval()

    suffix = ".tsv" if meta["modality"] == "text" else ".npz"
    train = read_examples(encoder, str(directory / f"train{suffix}"))
    validation = read_examples(encoder, str(directory / f"validation{suffix}"))
    train_batches = labelled_batches(encoder, train, labels)
    extra = dict(encoder.extra, labels=labels)
    if (directory / "plan.json").is_file():
        extra["variant_dir"] = str(directory)
    return ModelBundle(
        name=meta["name"],
        source=source,
        factory=factory,
        example_inputs=train_batches[0][0],
        calibration=[x for x, _ in train_batches],
        validation=labelled_batches(encoder, validation, labels),
        metric="accuracy",
        task="classification",
        tokenizer=encoder.tokenizer,
        extra=extra,
    )
