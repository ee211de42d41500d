"""Text a client sends must be valid Unicode: no lone UTF-16 surrogates.

JSON may spell a surrogate as an escape (``"a\\udfffb"`` is valid JSON), and a lone one (no
partner to make a pair) parses into a Python ``str`` that has no UTF-8 form. Whatever encodes
such text later fails: the BYTES wire format, the tokenizer (which fails the whole micro-batch
it lands in, other clients' requests included) and any answer that quotes it. So text is
checked where it arrives and refused (400) with where it was and what was expected.
"""

from __future__ import annotations

from service.serving.v2.schema import V2Error


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text``, or None when it is valid text.

    >>> lone_surrogate("a\\udfffb"), lone_surrogate("caf\\u00e9 \\U0001f600")
    (1, None)
    """
    if text.isascii():  # the common case, without an encode
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def not_text(where: str, text: str, at: int) -> V2Error:
    """The 400 for ``text`` (found at ``where``) whose character ``at`` is a lone surrogate.

    The message names the character by its escape: it cannot quote the text itself.
    """
    return V2Error(
        f"{where} is not valid text: character {at} is a lone UTF-16 surrogate "
        f"(\\u{ord(text[at]):04x}); expected valid UTF-8 text, where a surrogate only comes in "
        "a high-low pair"
    )


def check_text(where: str, text: str) -> None:
    """Refuse ``text`` (400 naming ``where``) when it holds a lone surrogate."""
    at = lone_surrogate(text)
    if at is not None:
        raise not_text(where, text, at)
