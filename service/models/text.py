"""English sentences from the standard library (``pydoc_data.topics``) for text models.

Split deterministically into calibration and validation halves that never share a sentence.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

_MIN_CHARS, _MAX_CHARS = 25, 300


def prose_sentences(text: str) -> list[str]:
    """Prose sentences of help text: code samples and indented grammar left out."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        if paragraph.startswith((" ", "\t", ">>>")):  # code samples and indented grammar
            continue
        flat = " ".join(paragraph.split())
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
            if _MIN_CHARS <= len(s) <= _MAX_CHARS and s[0].isupper() and s[-1] in ".!?":
                sentences.append(s)
    return sentences


@lru_cache(maxsize=1)
def stdlib_sentences() -> tuple[str, ...]:
    """Distinct prose sentences from Python's help topics, in a fixed shuffled order."""
    import pydoc_data.topics as topics

    ordered = sorted(set(prose_sentences("\n".join(topics.topics.values()))))
    random.Random(0).shuffle(ordered)
    return tuple(ordered)


def sentence_split(
    n_calibration: int = 512, n_validation: int = 256
) -> tuple[list[str], list[str]]:
    """Disjoint calibration and validation sentences."""
    all_sentences = stdlib_sentences()
    if n_calibration + n_validation > len(all_sentences):
        raise ValueError(
            f"asked for {n_calibration}+{n_validation} sentences, the standard library has "
            f"{len(all_sentences)}"
        )
    validation = list(all_sentences[:n_validation])
    calibration = list(all_sentences[n_validation : n_validation + n_calibration])
    return calibration, validation


def read_sentences(path: str) -> list[str]:
    """One sentence per line; blank lines are skipped. An empty file is an error."""
    from compression.errors import DataError

    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh]
    except OSError as err:
        raise DataError(f"cannot read sentence file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: expected one sentence per line") from None
    sentences = [s for s in lines if s]
    if not sentences:
        raise DataError(f"{path} holds no sentences: expected one sentence per line")
    return sentences
