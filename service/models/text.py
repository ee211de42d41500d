"""English sentences from the standard library, from two registers of text, for text models.

- the help topics of the language reference (``pydoc_data.topics``): prose about syntax and
  semantics;
- the docstrings of widely used standard-library modules (read with :mod:`ast`, nothing is
  imported): prose about what functions and classes do.

Calibration and validation each take half of their sentences from each source, so neither the
fits nor the checks see one register only; the two never share a sentence.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

_MIN_CHARS, _MAX_CHARS = 25, 300
# Modules with prose docstrings, across the library's areas (files, text, network, concurrency,
# data, numbers, testing). Read in this order; a module missing from an installation is skipped.
DOCSTRING_MODULES = (
    "argparse", "asyncio/base_events", "asyncio/events", "asyncio/futures", "asyncio/locks",
    "asyncio/queues", "asyncio/streams", "asyncio/tasks", "bisect", "calendar", "collections/__init__",
    "concurrent/futures/_base", "concurrent/futures/process", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "difflib", "email/message", "email/utils", "enum",
    "fractions", "ftplib", "functools", "gzip", "heapq", "http/client", "http/cookiejar",
    "http/server", "imaplib", "inspect", "ipaddress", "json/__init__", "logging/__init__",
    "logging/handlers", "mailbox", "multiprocessing/pool", "nntplib", "optparse", "os",
    "pathlib", "pickle", "poplib", "queue", "random", "sched", "selectors", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "ssl", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "trace", "turtle", "typing",
    "unittest/case", "unittest/mock", "urllib/parse", "urllib/request", "uuid", "warnings",
    "weakref", "zipfile",
)  # fmt: skip


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


def _shuffled(sentences: set[str]) -> tuple[str, ...]:
    ordered = sorted(sentences)
    random.Random(0).shuffle(ordered)
    return tuple(ordered)


@lru_cache(maxsize=1)
def stdlib_sentences() -> tuple[str, ...]:
    """Distinct prose sentences from Python's help topics, in a fixed shuffled order."""
    import pydoc_data.topics as topics

    return _shuffled(set(prose_sentences("\n".join(topics.topics.values()))))


@lru_cache(maxsize=1)
def docstring_sentences() -> tuple[str, ...]:
    """Distinct prose sentences of the docstrings of :data:`DOCSTRING_MODULES`, shuffled."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for name in DOCSTRING_MODULES:
        path = root / f"{name}.py"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            kinds = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            if isinstance(node, kinds) and (doc := ast.get_docstring(node)):
                docs.append(doc)
    return _shuffled(set(prose_sentences("\n\n".join(docs))) - set(stdlib_sentences()))


def sentence_split(
    n_calibration: int = 512, n_validation: int = 384
) -> tuple[list[str], list[str]]:
    """Disjoint calibration and validation sentences, half from each source, interleaved."""
    sources = (stdlib_sentences(), docstring_sentences())
    need = [(n + 1) // 2 for n in (n_validation, n_calibration)]
    if any(len(src) < sum(need) for src in sources):
        raise ValueError(
            f"asked for {n_calibration}+{n_validation} sentences, the standard library has "
            f"{min(len(src) for src in sources)} per source"
        )

    def mixed(start: int, n: int) -> list[str]:
        pairs = zip(sources[0][start : start + n], sources[1][start : start + n], strict=True)
        return [s for pair in pairs for s in pair]

    validation = mixed(0, need[0])[:n_validation]
    calibration = mixed(need[0], need[1])[:n_calibration]
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
