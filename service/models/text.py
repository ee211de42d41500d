"""English sentences from the standard library, from two registers of text, for text models.

- the help topics of the language reference (``pydoc_data.topics``): prose about syntax and
  semantics;
- the docstrings of widely used standard-library modules (read with :mod:`ast`, nothing is
  imported): prose about what functions and classes do;
- the IDLE user guide (``idlelib/help.html``): how to use an editor, a third register.

Calibration takes half of its sentences from each of the first two sources, so the fits do not
see one register only. Validation interleaves sentences of those two (even positions) with
sentences of the user guide (odd positions): the engine's selection split (even samples) is
text like the calibration's, its confirmation split (odd samples) a register no fit and no
choice has seen, so what a report claims is measured on text from another source. No two sets
share a sentence.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import html.parser
import json
import os
import random
import re
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

from compression.core.errors import DataError
from service.models.digits import cache_dir

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


def _cache_file(name: str) -> Path:
    """Where a sentence source is cached: under ``$SLIMSERVE_HOME/text`` (as the trained
    built-ins, ``service.models.digits.cache_dir``), keyed by this file, the interpreter and
    its standard library (reading them takes seconds, a cached list milliseconds)."""
    key = hashlib.sha256(
        Path(__file__).read_bytes() + f"{sys.version}|{sysconfig.get_paths()['stdlib']}".encode()
    ).hexdigest()[:12]
    return cache_dir().parent / "text" / f"{name}-{key}.json"


def _disk_cached(build):
    """Cache what ``build`` returns (a tuple of sentences) in :func:`_cache_file`; a cache
    that cannot be read or written is rebuilt or skipped, never an error."""

    @functools.wraps(build)
    def cached() -> tuple[str, ...]:
        path = _cache_file(build.__name__)
        try:
            return tuple(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
        sentences = build()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent first uses
            tmp.write_text(json.dumps(list(sentences)), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass
        return sentences

    return cached


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
@_disk_cached
def stdlib_sentences() -> tuple[str, ...]:
    """Distinct prose sentences from Python's help topics, in a fixed shuffled order."""
    import pydoc_data.topics as topics

    return _shuffled(set(prose_sentences("\n".join(topics.topics.values()))))


@lru_cache(maxsize=1)
@_disk_cached
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


class _PageText(html.parser.HTMLParser):
    """The prose of an HTML page: code blocks left out, block elements as paragraphs."""

    BLOCKS = ("p", "li", "dd", "dt", "h1", "h2", "h3", "div", "br", "tr")
    SKIP = ("pre", "script", "style")

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs) -> None:
        self.skipping += tag in self.SKIP
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag) -> None:
        self.skipping -= tag in self.SKIP
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data) -> None:
        if not self.skipping:
            self.parts.append(data)


@lru_cache(maxsize=1)
@_disk_cached
def guide_sentences() -> tuple[str, ...]:
    """Distinct prose sentences of the IDLE user guide, shuffled; empty where it is missing."""
    import importlib.util

    spec = importlib.util.find_spec("idlelib")
    page = Path(spec.origin).parent / "help.html" if spec and spec.origin else None
    if page is None or not page.is_file():
        return ()
    parser = _PageText()
    parser.feed(page.read_text(encoding="utf-8"))
    known = set(stdlib_sentences()) | set(docstring_sentences())
    return _shuffled(set(prose_sentences("".join(parser.parts))) - known)


def _interleave(*parts: list[str]) -> list[str]:
    return [s for group in zip(*parts, strict=False) for s in group]


def sentence_split(
    n_calibration: int = 512, n_validation: int = 384
) -> tuple[list[str], list[str]]:
    """Disjoint calibration and validation sentences (see the module docstring).

    Where the user guide is missing from an installation, validation is the first two sources
    only (then the confirmation split is the same register as the calibration).
    """
    topics, docs, guide = stdlib_sentences(), docstring_sentences(), guide_sentences()
    half = n_validation // 2
    in_register = half if len(guide) >= half else n_validation
    need = (n_calibration + in_register + 1) // 2
    if min(len(topics), len(docs)) < need:
        raise ValueError(
            f"asked for {n_calibration}+{n_validation} sentences, the standard library has "
            f"{min(len(topics), len(docs))} per source"
        )
    mixed = _interleave(list(topics[:need]), list(docs[:need]))
    seen, calibration = mixed[:in_register], mixed[in_register : in_register + n_calibration]
    if in_register == n_validation:
        return calibration, seen
    return calibration, _interleave(seen, list(guide[:half]))


def read_sentences(path: str) -> list[str]:
    """One sentence per line; blank lines are skipped. An empty file is an error."""
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
