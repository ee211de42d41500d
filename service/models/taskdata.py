"""Labelled data for task pruning: files users give, and two tasks that ship offline.

Files:

- text: ``label<TAB>sentence`` per line, or CSV with a header naming a label column (``label``,
  ``class`` or ``y``) and a text column (``sentence``, ``text`` or ``x``);
- arrays: ``.npz`` with ``x`` (inputs) and ``y`` (integer or string labels).

Built-in tasks:

- ``python-topics`` (text): which part of the Python language a sentence of the standard
  library's help topics (``pydoc_data.topics``) documents, five classes: control flow,
  numbers and operators, data types, functions and classes, names and modules. Each class is a
  fixed group of help topics (:data:`TOPIC_GROUPS`); a sentence found under two classes is
  dropped, so every label is unambiguous.
- ``digits-parity`` (images): whether a scikit-learn digit is even or odd.

Every error names the file, the line or the value, and what was expected.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compression.core.errors import DataError
from service.models.digits import digits_split
from service.models.text import prose_sentences

TOPIC_GROUPS: dict[str, tuple[str, ...]] = {
    "control-flow": (
        "if", "while", "for", "try", "with", "break", "continue", "else", "pass", "raise",
        "return", "yield", "compound", "exceptions", "assert", "async", "await",
        "context-managers",
    ),
    "numbers-operators": (
        "numbers", "integers", "floating", "imaginary", "numeric-types", "binary", "bitwise",
        "shifting", "power", "unary", "comparisons", "booleans", "truth", "operator-summary",
        "augassign", "conversions",
    ),
    "data-types": (
        "dict", "lists", "strings", "string-methods", "formatstrings", "sequence-types",
        "typesseq", "typesseq-mutable", "typesmapping", "slicings", "subscriptions",
        "atom-literals",
    ),
    "functions-classes": (
        "function", "class", "lambda", "calls", "callable-types", "customization",
        "specialnames", "specialattrs", "attribute-access", "attribute-references",
        "typesfunctions", "typesmethods", "objects", "bltin-type-objects", "id-classes",
    ),
    "names-modules": (
        "import", "global", "nonlocal", "naming", "identifiers", "execmodel",
        "dynamic-features", "typesmodules", "del", "atom-identifiers", "assignment",
    ),
}  # fmt: skip
_LABEL_COLUMNS = ("label", "class", "y")
_TEXT_COLUMNS = ("sentence", "text", "x")

Example = tuple[str, str]  # (label, sentence)


def _prose_sentences(text: str) -> set[str]:
    return set(prose_sentences(text))


def topic_examples() -> list[Example]:
    """Every (label, sentence) of the ``python-topics`` task, in a fixed shuffled order."""
    import pydoc_data.topics as topics

    found: dict[str, set[str]] = {}
    for label, keys in TOPIC_GROUPS.items():
        for key in keys:
            for sentence in _prose_sentences(topics.topics[key]):
                found.setdefault(sentence, set()).add(label)
    examples = sorted((labels.pop(), s) for s, labels in found.items() if len(labels) == 1)
    random.Random(0).shuffle(examples)
    return examples


def stratified_split(
    examples: Sequence[tuple], validation_fraction: float = 0.3, seed: int = 0
) -> tuple[list, list]:
    """Split (label, item) pairs into train and validation with each label in both."""
    by_label: dict = {}
    for ex in examples:
        by_label.setdefault(ex[0], []).append(ex)
    train, validation = [], []
    rng = random.Random(seed)
    for label in sorted(by_label, key=str):
        items = by_label[label][:]
        rng.shuffle(items)
        cut = max(1, round(len(items) * validation_fraction))
        validation += items[:cut]
        train += items[cut:]
    rng.shuffle(train)
    rng.shuffle(validation)
    return train, validation


def read_labelled_text(path: str | Path) -> list[Example]:
    """(label, sentence) pairs from a TSV (``label<TAB>sentence``) or a CSV with a header."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read labelled text {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: expected label<TAB>sentence lines") from None
    if not raw.strip():
        raise DataError(f"{path} is empty: expected label<TAB>sentence lines or a CSV")
    if path.suffix.lower() == ".csv":
        return _read_csv(path, raw)
    examples = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        label, tab, sentence = line.partition("\t")
        if not tab or not label.strip() or not sentence.strip():
            raise DataError(
                f"{path}, line {number}: expected label<TAB>sentence, got {line[:60]!r}"
            )
        examples.append((label.strip(), sentence.strip()))
    return examples


def _read_csv(path: Path, raw: str) -> list[Example]:
    reader = csv.DictReader(io.StringIO(raw))
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    label_col = next((c for c in _LABEL_COLUMNS if c in columns), None)
    text_col = next((c for c in _TEXT_COLUMNS if c in columns), None)
    if label_col is None or text_col is None:
        raise DataError(
            f"{path}: the header {columns} needs a label column (one of {_LABEL_COLUMNS}) and a "
            f"text column (one of {_TEXT_COLUMNS})"
        )
    examples = []
    for number, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "") for k, v in row.items()}
        label, sentence = row[label_col].strip(), row[text_col].strip()
        if not label or not sentence:
            raise DataError(f"{path}, line {number}: empty {label_col!r} or {text_col!r}")
        examples.append((label, sentence))
    if not examples:
        raise DataError(f"{path} has a header and no rows: expected labelled sentences")
    return examples


def read_labelled_arrays(path: str | Path) -> list[tuple]:
    """(label, input array) pairs from an ``.npz`` holding ``x`` and ``y``."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read labelled arrays {path}: {err}; expected .npz") from None
    if not isinstance(data, np.lib.npyio.NpzFile) or "x" not in data or "y" not in data:
        raise DataError(f"{path}: expected an .npz with arrays 'x' (inputs) and 'y' (labels)")
    x, y = data["x"], data["y"]
    if len(x) == 0:
        raise DataError(f"{path} holds no samples: expected at least one labelled input")
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} labels; expected one label each")
    return [(str(label), x[i].astype(np.float32)) for i, label in enumerate(y.tolist())]


def label_names(train: Sequence[tuple], validation: Sequence[tuple] | None) -> list[str]:
    """The classes, sorted; errors for a single class or a validation label never trained on."""
    names = sorted({ex[0] for ex in train}, key=_natural)
    if len(names) < 2:
        raise DataError(
            f"training data has one class ({names[0]!r}) only: a classifier needs at least two"
        )
    if validation is not None:
        unseen = sorted({ex[0] for ex in validation} - set(names), key=_natural)
        if unseen:
            raise DataError(
                f"validation labels {unseen[:5]} never appear in training (classes: {names})"
            )
    return names


def _natural(label: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label))


def digits_parity() -> tuple[list[tuple], list[tuple]]:
    """The ``digits-parity`` task: (label, 1x8x8 image) pairs, train and validation."""
    x_tr, y_tr, x_te, y_te = digits_split()

    def pairs(x, y) -> list[tuple]:
        return [("even" if int(t) % 2 == 0 else "odd", x[i].numpy()) for i, t in enumerate(y)]

    return pairs(x_tr, y_tr), pairs(x_te, y_te)
