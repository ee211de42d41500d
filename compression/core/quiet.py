"""Library output kept out of the user's terminal and summarised in one line.

Exporters and quantizers talk: ONNX Runtime's quantizer logs a warning per tensor it skips
(with the tensor's protobuf), and a failed ``torch.onnx.export`` prints the whole TorchScript
graph. None of it is for the person who asked for a compression. :func:`captured` collects
what a block writes to the process's stdout and stderr (at the file-descriptor level, so C++
output is caught too), its Python warnings and its log records; :meth:`Captured.summary` is
one line for the report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Captured:
    """What a block said: its lines, in the order each channel produced them."""

    what: str
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str | None:
        """One line: how many lines were held back and the first that says something; None
        when the block was silent."""
        said = [line.strip() for line in self.lines if line.strip()]
        if not said:
            return None
        first = said[0] if len(said[0]) <= 160 else said[0][:157] + "..."
        return f"{self.what}: {len(said)} lines of library output held back (first: {first})"


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.extend(f"{record.levelname}: {record.getMessage()}".splitlines())


@contextlib.contextmanager
def _file_descriptors(into: list[str]) -> Iterator[None]:
    """fds 1 and 2 into a temporary file for the block; its text into ``into``."""
    streams = (sys.stdout, sys.stderr)
    for s in streams:
        with contextlib.suppress(Exception):
            s.flush()
    python = io.StringIO()  # sys.stdout may not write to fd 1 (a test runner's capture)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(python), contextlib.redirect_stderr(python):
                yield
        finally:
            for s in streams:
                with contextlib.suppress(Exception):
                    s.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            into.extend(python.getvalue().splitlines())
            into.extend(sink.read().decode("utf-8", "replace").splitlines())


@contextlib.contextmanager
def captured(what: str) -> Iterator[Captured]:
    """Run a block with its stdout, stderr, warnings and log records collected (``what``
    names the block in the summary). Exceptions pass through unchanged."""
    out = Captured(what)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # The root logger alone, with the collector as its only handler: a library calling
    # logging.warning() would otherwise install a stderr handler for the whole process.
    root.handlers = [_Collect(out.lines)]
    try:
        with warnings.catch_warnings(record=True) as said, _file_descriptors(out.lines):
            warnings.simplefilter("always")
            yield out
        out.lines.extend(f"{w.category.__name__}: {w.message}" for w in said)
    finally:
        root.handlers, root.level = handlers, level
