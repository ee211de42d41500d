"""Shared by the benchmarks: machine description, result files, README blocks, percentiles.

Every benchmark writes ``benchmarks/results/<name>.json`` (everything measured) and
``<name>.md`` (the tables); with ``--readme`` the same Markdown replaces the block between
``<!-- <NAME>:BEGIN -->`` and ``<!-- <NAME>:END -->`` in README.md (NAME is the module name in
capitals), so README figures are regenerated from a run, never typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
README = ROOT / "README.md"


# ---- the machine --------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the figures were measured on, including how busy the machine was at the start."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average": [round(x, 2) for x in load],
    }


def describe_machine(m: dict) -> str:
    return (
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}, load average {m['load_average'][0]} at start"
    )


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---- numbers ------------------------------------------------------------------------------


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100, linear interpolation); NaN for no values."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def latency_summary(ms: list[float]) -> dict:
    """p50/p90/p99/mean/max of latencies in milliseconds."""
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
    }


def fmt(value, digits: int = 2) -> str:
    """A number for a table cell; '–' for missing or NaN."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return lines


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


# ---- result files and the README ----------------------------------------------------------


def marker(name: str) -> tuple[str, str]:
    key = name.upper().replace("-", "_")
    return f"<!-- {key}:BEGIN -->", f"<!-- {key}:END -->"


def save(name: str, result: dict, markdown: str) -> tuple[Path, Path]:
    """Write results/<name>.json and results/<name>.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    js.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md.write_text(markdown)
    return js, md


def update_readme(name: str, markdown: str, readme: Path = README) -> bool:
    """Replace the README block of ``name``; False (and a note) when the markers are missing."""
    begin, end = marker(name)
    text = readme.read_text()
    if begin not in text or end not in text.partition(begin)[2]:
        print(f"README.md has no {begin} ... {end} block; not updated")
        return False
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{begin}\n{markdown.rstrip()}\n{end}{tail}")
    print(f"README.md: {begin} block updated")
    return True


def finish(name: str, result: dict, markdown: str, readme: str | None = None) -> None:
    """Save the result files, print the Markdown; ``readme``: the README block's text (its
    links are relative to the repository root, the .md file's to results/), None to leave it."""
    if hasattr(os, "getloadavg") and isinstance(result.get("machine"), dict):
        result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    js, md = save(name, result, markdown)
    if readme is not None:
        update_readme(name, readme)
    print(markdown)
    print(f"wrote {js.relative_to(ROOT)} and {md.relative_to(ROOT)}")
