"""Prune for the user's task: a classification head on a pretrained model, trained here.

A :class:`Task` names labelled training batches and the class names. :func:`fit_head` puts a
small head (linear, or a one-hidden-layer MLP) on the pretrained model's pooled output and trains
it on frozen features, time-boxed; the result is a :class:`TaskModel`, an ordinary ``nn.Module``
whose output is class scores. ``compress(model, profile, task=Task(...))`` does this first, then
compresses the task model against *its* labels: importance from the task loss's gradients
(Taylor on the true labels), least-squares refits that keep the head's inputs, and verification
by accuracy with the profile's ``max_drop`` — far more room than keeping every dimension of an
embedding, because the task only reads what the head reads::

    >>> task = Task(train=[(batch, labels)], labels=["neg", "pos"])
    >>> variant = compress(encoder, "cpu", task=task, validation=[(val_batch, val_labels)])
    >>> variant.report.task_metrics["after"]["macro_f1"]  # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from compression.core.errors import DataError
from compression.core.inputs import Batch, call, main_output, token_mask
from compression.evaluation.metrics import classification_metrics
from compression.pipeline import compress_model
from compression.profiles import get_profile

HEADS = ("linear", "mlp")


@dataclass
class Task:
    """A labelled classification task.

    ``train`` yields ``(inputs, labels)`` batches (labels: int class ids ``0..len(labels)-1``),
    ``labels`` are the class names in id order. The head trains for at most ``head_seconds``;
    ``finetune_seconds`` > 0 adds a time-boxed fine-tune of each pruned candidate to the task
    model's scores (the rebuild ladder's distillation step; 0 turns it off).
    """

    train: list[tuple[Batch, torch.Tensor]]
    labels: list[str]
    head: str = "linear"
    head_seconds: float = 30.0
    # A few seconds per candidate win back accuracy the cut lost, so the search prunes much
    # further within the same accuracy budget than without it (measured on digits-parity,
    # digits-cnn, cpu profile with int8 off).
    finetune_seconds: float = 5.0
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise DataError(f"task head {self.head!r}: expected one of {HEADS}")
        if not self.train:
            raise DataError("task: no training batches; expected (inputs, labels) pairs")
        if len(self.labels) < 2:
            raise DataError(f"task: {len(self.labels)} class; a classifier needs at least 2")
        seen = torch.cat([torch.as_tensor(y).reshape(-1) for _, y in self.train])
        if seen.numel() == 0:
            raise DataError("task: the training batches hold no labels")
        if int(seen.min()) < 0 or int(seen.max()) >= len(self.labels):
            raise DataError(
                f"task: label ids must lie in 0..{len(self.labels) - 1} (the class names "
                f"{self.labels}), got {int(seen.min())}..{int(seen.max())}"
            )
        if len(torch.unique(seen)) < 2:
            raise DataError(
                f"task: every training label is {self.labels[int(seen[0])]!r}; "
                "a classifier needs at least two classes"
            )


def pool(out: object, batch: Batch) -> torch.Tensor:
    """One feature vector per sample: masked mean over tokens (L2-normalised) or the flat output."""
    x = main_output(out).float()
    if x.dim() == 3:
        mask = token_mask(batch)
        m = (mask if mask is not None else torch.ones(x.shape[:2])).unsqueeze(-1).to(x)
        x = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return nn.functional.normalize(x, dim=-1)
    return x.reshape(x.shape[0], -1)


class TaskModel(nn.Module):
    """``encoder`` followed by pooling and a classification ``head``: class scores out."""

    def __init__(self, encoder: nn.Module, head: nn.Module, summary: dict | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.summary = summary or {}  # how the head was trained (not part of the weights)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        batch: Batch = kwargs if kwargs else (args[0] if len(args) == 1 else args)
        features = pool(self.encoder(*args, **kwargs), batch)  # pooled in float32
        weight = next((p for p in self.head.parameters() if p.is_floating_point()), None)
        return self.head(features if weight is None else features.to(weight.dtype))


def make_head(kind: str, features: int, classes: int) -> nn.Module:
    """A fresh head: ``linear`` or ``mlp`` (one hidden layer of min(256, features) units)."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(features, classes))
    hidden = min(256, features)
    return nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, classes))


def features(encoder: nn.Module, batches: list[tuple[Batch, torch.Tensor]]):
    """Pooled features and labels of every batch (the encoder frozen)."""
    xs, ys = [], []
    with torch.inference_mode():
        for inputs, labels in batches:
            xs.append(pool(call(encoder, inputs), inputs))
            ys.append(torch.as_tensor(labels).reshape(-1).long())
    return torch.cat(xs), torch.cat(ys)


def fit_head(encoder: nn.Module, task: Task) -> tuple[TaskModel, dict]:
    """Train a head on ``encoder``'s frozen features; returns the task model and a summary.

    Full-batch AdamW with weight decay, at most 500 epochs or ``task.head_seconds``, keeping the
    epoch with the lowest training loss. Features are computed once, so this costs one forward
    of the training set plus milliseconds per epoch.
    """
    started = time.perf_counter()
    encoder = encoder.eval()
    x, y = features(encoder, task.train)
    torch.manual_seed(task.seed)
    head = make_head(task.head, x.shape[1], len(task.labels))
    # Balanced classes: a rare class costs as much as a common one.
    counts = torch.bincount(y, minlength=len(task.labels)).clamp_min(1).float()
    weight = counts.sum() / (len(task.labels) * counts)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    best, best_state, epochs = math.inf, None, 0
    deadline = time.monotonic() + task.head_seconds
    with torch.enable_grad():
        while epochs < 500 and time.monotonic() < deadline:
            loss = nn.functional.cross_entropy(head(x), y, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            epochs += 1
            if loss.item() < best:
                best = loss.item()
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    with torch.inference_mode():
        train_acc = float((head(x).argmax(1) == y).float().mean())
    summary = {
        "head": task.head,
        "features": int(x.shape[1]),
        "classes": len(task.labels),
        "train_samples": int(len(y)),
        "epochs": epochs,
        "train_loss": round(best, 4),
        "train_accuracy": round(train_acc, 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
    summary["labels"] = list(task.labels)
    return TaskModel(encoder, head, summary).eval(), summary


def evaluate(model: nn.Module, validation: list[tuple[Batch, torch.Tensor]]) -> dict[str, float]:
    """:func:`classification_metrics` of ``model`` on labelled validation batches."""
    scores, labels = [], []
    with torch.inference_mode():
        for inputs, y in validation:
            scores.append(main_output(call(model, inputs)).float().cpu())
            labels.append(torch.as_tensor(y).reshape(-1))
    return classification_metrics(torch.cat(scores).numpy(), torch.cat(labels).numpy())


def _holdout(task: Task, fraction: float = 0.2) -> tuple[list, list]:
    """Split the task's training batches into (train, validation) by whole batches."""
    n = len(task.train)
    if n < 2:
        raise DataError(
            "task: pass validation= (labelled batches), or at least two training batches to "
            "hold one out"
        )
    cut = max(1, round(n * fraction))
    return task.train[cut:], task.train[:cut]


def compress_task(
    model: nn.Module,
    profile,
    task: Task,
    *,
    example_inputs: Batch | None = None,
    calibration=None,
    validation=None,
    metric="accuracy",
    **kwargs,
):
    """Fit the task's head on ``model``, then compress the task model against the labels.

    What :func:`compression.compress` does when given ``task=``. A ``model`` that already is a
    :class:`TaskModel` (from :func:`fit_head`) keeps its head. Calibration defaults to the
    training inputs; without ``validation=`` a fifth of the training batches is held out (the
    head never sees them). The report carries the head's summary (``task``) and accuracy,
    macro precision/recall/F1 before and after (``task_metrics``).
    """
    if validation is None:
        train, validation = _holdout(task)
        task = Task(**{**task.__dict__, "train": train})
    validation = [(x, torch.as_tensor(y).reshape(-1).long()) for x, y in validation]
    if any(y.numel() and int(y.max()) >= len(task.labels) for _, y in validation):
        raise DataError(f"validation holds label ids outside 0..{len(task.labels) - 1}")
    if isinstance(model, TaskModel):
        task_model, summary = model, dict(model.summary, labels=list(task.labels))
    else:
        task_model, summary = fit_head(model, task)
    profile = get_profile(profile)
    # The task model's logits are what the head produces: no embedding-neighbour check.
    update: dict = {"min_neighbour_recall": None}
    if task.finetune_seconds > 0:
        rebuild = [*profile.rebuild, "distill"] if "distill" not in profile.rebuild else None
        update["distill_seconds"] = task.finetune_seconds
        if rebuild is not None:
            update["rebuild"] = rebuild
    profile = profile.model_copy(update=update)
    example = example_inputs if example_inputs is not None else task.train[0][0]
    calib = calibration if calibration is not None else [x for x, _ in task.train]
    before = evaluate(task_model, validation)
    variant = compress_model(
        task_model,
        profile,
        example_inputs=example,
        calibration=calib,
        validation=validation,
        metric=metric,
        **kwargs,
    )
    variant.report.task = summary
    variant.report.task_metrics = {"before": before, "after": evaluate(variant.module, validation)}
    variant.plan["task"] = task_spec(task_model, task.labels)
    return variant


def task_spec(model: TaskModel, labels: list[str]) -> dict:
    """What it takes to rebuild ``model``'s shape: head kind, features, classes, class names."""
    first = model.head[0]
    kind = "linear" if len(model.head) == 1 else "mlp"
    return {
        "head": kind,
        "features": first.in_features,
        "classes": len(labels),
        "labels": list(labels),
    }


def rebuild_task_model(encoder: nn.Module, spec: dict) -> TaskModel:
    """A fresh task model shaped as a plan's ``task`` entry says (weights come from the variant).

    >>> model = rebuild_task_model(encoder, plan["task"])  # doctest: +SKIP
    """
    try:
        head = make_head(spec["head"], int(spec["features"]), int(spec["classes"]))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"the plan's task entry {spec!r} is incomplete: {err}") from None
    return TaskModel(encoder, head).eval()
