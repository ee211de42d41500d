"""Held-out data the engine never sees, for checking what a report claims.

The built-in text models calibrate and verify on the standard library's help topics and module
docstrings (``service.models.text``). Held out from both, in another register of English:

- the IDLE user guide that ships with Python (``idlelib/help.html``): how to use an editor;
- the dataset descriptions that ship with scikit-learn (``DESCR`` of the toy datasets).

Sentences that also occur in the engine's sources are dropped. For the digits models the
held-out set is the digits test split shifted by one pixel (another distribution than the
unshifted digits the engine verifies on).
"""

from __future__ import annotations

import html.parser
from functools import lru_cache
from pathlib import Path

import torch


class _Text(html.parser.HTMLParser):
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
def heldout_sentences() -> tuple[str, ...]:
    """English sentences from sources the engine's text data never uses (see module doc)."""
    import idlelib

    import sklearn.datasets as datasets

    from service.models.text import docstring_sentences, prose_sentences, stdlib_sentences

    page = _Text()
    page.feed((Path(idlelib.__file__).parent / "help.html").read_text(encoding="utf-8"))
    loaders = ("load_iris", "load_wine", "load_breast_cancer", "load_digits", "load_diabetes")
    descr = "\n\n".join(getattr(datasets, name)().DESCR for name in loaders)
    known = set(stdlib_sentences()) | set(docstring_sentences())
    found = prose_sentences("".join(page.parts)) + prose_sentences(descr)
    return tuple(s for s in dict.fromkeys(found) if s not in known)


def shifted_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits test split, every image shifted one pixel right (a border column of 0)."""
    from service.models.digits import digits_split

    _, _, x, y = digits_split()
    shifted = torch.zeros_like(x)
    shifted[..., 1:] = x[..., :-1]
    return shifted, y
