"""The compression report: ``report.json`` (a contract other tools read: keep its keys) and ``report.png``.

:func:`build_report` assembles it from what the search measured and what verification chose.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from compression.core.candidate import Candidate
from compression.core.inputs import batch_size
from compression.evaluation import metrics
from compression.search.context import Built, SearchContext
from compression.search.verify import Verdict


@dataclass
class CompressionReport:
    """Everything measured about one compression; ``to_dict()`` is report.json."""

    model: str
    profile: str
    accepted: bool
    reason: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    latency_ms_before: float
    latency_ms_after: float
    speedup: float
    metric: str
    metric_before: float
    metric_after: float
    fidelity: float
    budget: float
    seconds: float
    steps: list[dict] = field(default_factory=list)
    ratio: float = 0.0
    allocation: str = ""
    importance: str = ""
    precision: str = "float32"
    sparsity: str = "none"  # weight sparsity of the chosen variant (compression.forms.sparsity)
    packed: bool = False  # served on packed tokens (compression.forms.packing)
    target_met: bool = False
    neighbour_recall: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    # Labelled tasks: {"before": {...}, "after": {...}} of accuracy, macro_f1, precision, recall.
    task_metrics: dict | None = None
    # What the runtime step did (compression.forms.runtimes): export checks, skips and fallbacks.
    runtimes: list[str] = field(default_factory=list)
    # Task pruning (compression.task): class names and how the head was trained.
    task: dict | None = None
    # Figures per data split (compression.search.splits): calibration (samples the fits used),
    # selection (the chosen candidate where the search measured it), confirmation (where
    # acceptance was decided; metric_after, fidelity and neighbour_recall are these).
    splits: dict = field(default_factory=dict)
    # Why ``metric`` decided: {"metric", "why"} and its settings (compression.evaluation.kinds);
    # None for perplexity. ``fidelity`` (cosine) is reported beside whatever decided.
    metric_reading: dict | None = None
    # How ``metric_after`` was bounded (compression.search.claims): {"method", "samples",
    # "needed"}; needed: what would verify a budget the data could not.
    claim: dict | None = None

    @property
    def macs_reduction(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    @property
    def params_reduction(self) -> float:
        return self.params_before / max(self.params_after, 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["macs_reduction"] = round(self.macs_reduction, 4)
        data["params_reduction"] = round(self.params_reduction, 4)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CompressionReport:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        data["candidates"] = [Candidate(**c) for c in data.get("candidates", [])]
        return cls(**data)

    def plot(self, path: str | Path) -> None:
        """Metric against measured latency for every candidate tried (report.png)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for ok, colour, label in ((True, "tab:green", "within budget"), (False, "tab:red", "over")):
            pts = [c for c in self.candidates if c.within_budget == ok and c.latency_ms > 0]
            ax.scatter([c.latency_ms for c in pts], [c.metric for c in pts], c=colour, label=label)
        ax.scatter(
            [self.latency_ms_before],
            [self.metric_before],
            marker="*",
            s=160,
            c="black",
            label="original",
        )
        if self.accepted:
            ax.scatter(
                [self.latency_ms_after],
                [self.metric_after],
                marker="o",
                s=160,
                facecolors="none",
                edgecolors="tab:blue",
                label="chosen",
            )
        ax.axhline(self.budget, ls="--", c="grey", lw=1, label="budget")
        ax.set_xlabel(f"latency (ms, median, {self.profile} profile)")
        ax.set_ylabel(self.metric)
        ax.set_title(
            f"{self.model}: {self.speedup:.2f}x faster, {self.metric} {self.metric_after:.4f}"
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def build_report(
    ctx: SearchContext,
    verdict: Verdict,
    candidates: list[Built],
    *,
    model: str,
    started: float,
) -> CompressionReport:
    """The report of one compression: the chosen candidate, every candidate tried, the steps.

    ``started`` is the ``time.perf_counter()`` at which the compression began.
    """
    chosen, c = verdict.chosen, verdict.chosen.candidate
    name = metrics.metric_name(ctx.metric)
    # What the report claims comes from the confirmation split when there is one.
    final = ctx.confirmation or ctx.selection
    conf = verdict.confirmed or {"metric": c.metric, "fidelity": c.fidelity, "recall": c.recall}
    steps = report_steps(ctx, verdict, conf, name)
    task_metrics = None
    if ctx.metric in metrics.LABELLED:  # accuracy, F1
        task_metrics = classification_report(final.reference, chosen.module, final.data)
    return CompressionReport(
        model=model,
        profile=ctx.profile.name,
        accepted=verdict.accepted,
        reason=verdict.reason,
        params_before=verdict.params_before,
        params_after=c.params,
        macs_before=verdict.macs_before,
        macs_after=c.macs,
        latency_ms_before=round(verdict.latency_ms_before, 4),
        latency_ms_after=round(verdict.latency_ms_after, 4),
        speedup=round(verdict.speedup, 4),
        metric=name,
        metric_before=round(final.metric_before, 6),
        metric_after=conf["metric"],
        fidelity=conf["fidelity"],
        budget=round(final.budget, 6),
        seconds=round(time.perf_counter() - started, 2),
        steps=steps,
        ratio=c.ratio,
        allocation=c.allocation,
        importance=ctx.profile.importance,
        precision=c.precision,
        sparsity=c.sparsity,
        packed=c.packed,
        target_met=verdict.target_met,
        neighbour_recall=conf["recall"],
        timings=ctx.timings,
        candidates=[b.candidate for b in candidates],
        task_metrics=task_metrics,
        splits=split_figures(ctx, c, verdict),
        metric_reading=_reading(ctx),
        claim=(verdict.confirmed or {}).get("claim"),
    )


def _reading(ctx: SearchContext) -> dict | None:
    """The report's metric_reading: how the metric was chosen, or None (perplexity)."""
    if ctx.reading is None:
        return None
    out = ctx.reading.to_dict()
    if ctx.reading.metric != ctx.metric:  # a labelled metric: its classes bound its drop
        out["metric"] = metrics.metric_name(ctx.metric)
        out["why"] = f"labelled data ({out['why']})"
    return out


def report_steps(ctx: SearchContext, verdict: Verdict, conf: dict, name: str) -> list[dict]:
    """The chosen candidate's steps, then what was not built or failed, and the verdict."""
    c, final = verdict.chosen.candidate, ctx.confirmation or ctx.selection
    steps = list(verdict.chosen.steps)
    steps += [{"step": "prune", "kept": False, "detail": f"failed: {f}"} for f in ctx.failures]
    steps += [{"step": "prune", "kept": False, "detail": f"skipped {s}"} for s in ctx.skipped]
    if ctx.unprunable:
        steps.insert(
            0, {"step": "prune", "kept": False, "detail": f"not applicable: {ctx.unprunable}"}
        )
    if not any(s["step"] == "precision" for s in steps):  # the precision step says what it did
        steps.append({"step": "precision", "kept": c.precision != "float32", "detail": c.precision})
    if ctx.profile.sparsity != "none" and c.sparsity == "none":
        steps.append({"step": "sparsity", "kept": False, "detail": "no sparse candidate won"})
    steps.append(
        {
            "step": "verify",
            "kept": verdict.accepted,
            "detail": f"{name} {conf['metric']:.4f} vs budget {final.budget:.4f}"
            + (
                f" on the confirmation split (claimed; measured "
                f"{verdict.confirmed['measured']['metric']:.4f})"
                if verdict.confirmed
                else ""
            )
            + "".join(f"; refused {r}" for r in verdict.refused)
            + (
                f" (ratio of perplexities; the original's is {ctx.reference_perplexity:.3f})"
                if ctx.metric == "perplexity"
                else ""
            ),
        }
    )
    return steps


def split_figures(ctx: SearchContext, c: Candidate, verdict: Verdict) -> dict:
    """Samples and the chosen candidate's figures on each data split (report.splits)."""
    figures = {
        "calibration": {"samples": batch_size(ctx.calibration), "used_for": "fits"},
        "selection": {
            "samples": ctx.selection.samples if ctx.selection else None,
            "metric": c.metric,
            "fidelity": c.fidelity,
            "recall": c.recall,
            "used_for": "search"
            + (" (in-sample: too little data to hold any out)" if ctx.in_sample else ""),
        },
    }
    if ctx.confirmation is not None and verdict.confirmed is not None:
        figures["confirmation"] = {
            "samples": ctx.confirmation.samples,
            **{k: verdict.confirmed[k] for k in ("metric", "fidelity", "recall")},
            "measured": verdict.confirmed["measured"],
            "standard_error": verdict.confirmed["standard_error"],
            "used_for": "acceptance (figures: the claims, one-sided 95 % bounds, see claim; "
            "measured: as measured)",
        }
    return figures


def classification_report(reference_val: list, module, val_list: list) -> dict:
    """Accuracy and macro precision/recall/F1 of the original and of the chosen variant."""
    labels = torch.cat([torch.as_tensor(y).reshape(-1) for _, y in val_list]).numpy()
    after = metrics.outputs(module, val_list)
    return {
        "before": metrics.classification_metrics(torch.cat(reference_val).cpu().numpy(), labels),
        "after": metrics.classification_metrics(torch.cat(after).cpu().numpy(), labels),
    }
