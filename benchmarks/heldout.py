"""Held-out data the engine never sees, for checking what a report claims.

The built-in text models calibrate on the standard library's help topics and module docstrings
and confirm on the IDLE user guide (``service.models.text``). Held out from all three:

- the descriptions (READMEs) of the Python packages installed beside SlimServe
  (``importlib.metadata``), sentences with links, code or markup left out: what projects say
  about themselves;
- the dataset descriptions that ship with scikit-learn (``DESCR`` of the toy datasets).

The set depends on what is installed; the benchmark records how many sentences it used.

Sentences that also occur in the engine's sources are dropped. For the digits models the
held-out set is the digits test split shifted by one pixel (another distribution than the
unshifted digits the engine verifies on).
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def heldout_sentences(n: int = 384) -> tuple[str, ...]:
    """English sentences from sources the engine's text data never uses (see module doc)."""
    import importlib.metadata
    import random

    import sklearn.datasets as datasets

    from service.models.text import (
        docstring_sentences,
        guide_sentences,
        prose_sentences,
        stdlib_sentences,
    )

    loaders = ("load_iris", "load_wine", "load_breast_cancer", "load_digits", "load_diabetes")
    descr = prose_sentences("\n\n".join(getattr(datasets, name)().DESCR for name in loaders))
    readmes = sorted(
        {
            s
            for d in importlib.metadata.distributions()
            for s in prose_sentences(d.metadata.get_payload() or "")
            if not any(mark in s for mark in ("http", "`", "|", "*", "[", "#"))
        }
    )
    random.Random(0).shuffle(readmes)
    known = set(stdlib_sentences()) | set(docstring_sentences()) | set(guide_sentences())
    found = descr + readmes
    return tuple(s for s in dict.fromkeys(found) if s not in known)[:n]


def shifted_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits test split, every image shifted one pixel right (a border column of 0)."""
    from service.models.digits import digits_split

    _, _, x, y = digits_split()
    shifted = torch.zeros_like(x)
    shifted[..., 1:] = x[..., :-1]
    return shifted, y
