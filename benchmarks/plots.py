"""Metric against measured speed-up per method, with the Pareto front (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

MARKERS = {"torch-pruning": "s", "slimserve": "o", "slimserve+distill": "^", "original": "*"}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both speed-up (x) and metric (y), by speed-up."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)


def pareto_plot(model: str, rows: list[dict], metrics: list[tuple[str, str]], path: Path) -> Path:
    """One panel per (key, label) metric: every row at (speedup_b32, metric), the front dashed.

    ``rows`` carry ``method``, ``ratio``, ``speedup_b32`` and the metric keys; the original is a
    row with method ``original``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics, strict=True):
        points = [(r["speedup_b32"], r[key]) for r in rows]
        front = pareto_front(points)
        ax.plot(*zip(*front, strict=True), "--", color="grey", lw=1, label="Pareto front")
        for method, marker in MARKERS.items():
            mine = [r for r in rows if r["method"] == method]
            if not mine:
                continue
            ax.scatter(
                [r["speedup_b32"] for r in mine],
                [r[key] for r in mine],
                marker=marker,
                s=80 if method == "original" else 45,
                label=method,
                zorder=3,
            )
            for r in mine:
                if method != "original":
                    ax.annotate(
                        f"{r['ratio']:.0%}",
                        (r["speedup_b32"], r[key]),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                    )
        ax.set_xlabel("measured CPU speed-up (batch 32)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_title(f"{model}: {label} vs speed-up")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
