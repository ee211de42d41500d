"""The compression report: ``report.json`` (a contract other tools read: keep its keys) and ``report.png``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Candidate:
    """One variant the search built and measured."""

    ratio: float
    allocation: str
    precision: str
    macs: int
    params: int
    latency_ms: float
    metric: float
    fidelity: float
    within_budget: bool
    note: str = ""
    recall: float | None = None  # neighbour recall@10 (cosine metric), see metrics


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
    target_met: bool = False
    neighbour_recall: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    # Labelled tasks: {"before": {...}, "after": {...}} of accuracy, macro_f1, precision, recall.
    task_metrics: dict | None = None
    # Task pruning (compression.task): class names and how the head was trained.
    task: dict | None = None

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
            pts = [c for c in self.candidates if c.within_budget == ok]
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
