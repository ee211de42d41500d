"""Calibration from live traffic: the reservoir of request inputs, written for a job to read.

Text models write one sentence per line; other models write an ``.npy`` array. The job uses
the sample for calibration and verifies by fidelity to the original on a held-out quarter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compression.core.errors import DataError
from service.models.bundle import set_text_data


def write_live_calibration(rows: list, directory: Path) -> Path:
    """Persist a reservoir snapshot; returns the file path."""
    directory.mkdir(parents=True, exist_ok=True)
    if rows and isinstance(rows[0], str):
        path = directory / "live.txt"
        path.write_text("\n".join(r.replace("\n", " ") for r in rows) + "\n", encoding="utf-8")
    else:
        path = directory / "live.npy"
        np.save(path, np.stack(rows).astype(np.float32), allow_pickle=False)
    return path


def load_live_calibration(bundle, path: Path) -> None:
    """Replace a bundle's calibration with the live sample; validation = fidelity on a holdout."""
    import torch

    if path.suffix == ".txt":
        sentences = [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        if len(sentences) < 8:
            raise DataError(f"live sample holds {len(sentences)} sentences; expected at least 8")
        cut = max(1, len(sentences) // 4)
        set_text_data(bundle, sentences[cut:], sentences[:cut])
        return
    x = torch.from_numpy(np.load(path, allow_pickle=False))
    if len(x) < 8:
        raise DataError(f"live sample holds {len(x)} inputs; expected at least 8")
    cut = max(1, len(x) // 4)
    held, calib = x[:cut], x[cut:]
    bundle.calibration = [calib[i : i + 64] for i in range(0, len(calib), 64)]
    bundle.validation = [(held, None)]
    bundle.example_inputs = calib[:8]
    bundle.metric = "cosine"
