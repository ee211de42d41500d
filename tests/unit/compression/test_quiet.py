"""Library output stays out of the user's terminal and is summarised in one line."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
import torch
from torch import nn

from compression.core.quiet import captured

pytestmark = pytest.mark.unit


def test_every_channel_is_collected_and_none_reaches_the_terminal(capfd):
    with captured("a library") as said:
        print("from print")
        os.write(2, b"from C++ on fd 2\n")
        warnings.warn("a deprecation", UserWarning, stacklevel=1)
        logging.warning("a root log record")
        logging.getLogger("some.library").error("a named logger")
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    text = "\n".join(said.lines)
    for piece in ("from print", "from C++", "a deprecation", "a root log record", "a named"):
        assert piece in text, text
    assert said.summary().startswith("a library: 5 lines of library output held back (first: ")
    # The root logger is as it was: no stderr handler installed behind the caller's back.
    assert all(type(h).__name__ != "_Collect" for h in logging.getLogger().handlers)


def test_a_silent_block_has_no_summary_and_exceptions_pass_through():
    with captured("quiet") as said:
        pass
    assert said.summary() is None
    with pytest.raises(ValueError, match="boom"), captured("raises"):
        raise ValueError("boom")


class _NoOnnx(nn.Module):
    """A model with an operator ONNX has no export for: the exporter fails and prints its
    TorchScript graph."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.special.bessel_j0(self.lin(x))


def test_a_failed_onnx_export_is_one_note_not_a_graph_on_the_terminal(capfd):
    runtimes = pytest.importorskip("compression.forms.runtimes")
    if runtimes.available() is not None:
        pytest.skip(runtimes.available())
    x = torch.randn(4, 8)
    found, notes = runtimes.candidates(_NoOnnx().eval(), x, [torch.randn(3, 8)], threads=2)
    out, err = capfd.readouterr()
    assert found == []
    assert out == "" and err == "", (out[-500:], err[-500:])
    assert notes[0].startswith("onnx export failed, torch serves: UnsupportedOperatorError"), notes
    assert any("lines of library output held back" in n for n in notes), notes
    assert all("\n" not in n for n in notes), notes
