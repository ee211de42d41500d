"""Every error the service answers a client with, and its HTTP status, in one place.

The app registers one exception handler for :class:`ServiceError`; it answers
``{"error": message}`` with the error's ``status``. Anything else that escapes a handler is a
bug and answers 500 (and is logged), so a ``KeyError`` in the code never turns into a 404.

    ServiceError                  500 unless a subclass says otherwise
    ├── BadRequest                400  a body or parameter that does not fit (v2.V2Error too,
    │                                  whose status the codec picks: 400, 404 or 413)
    ├── Unauthorized              401  no or wrong bearer token
    ├── AdminDisabled             403  no admin token configured
    ├── NotFound                  404
    │   ├── UnknownModel               no such served model
    │   ├── UnknownVariant             no such variant of a model
    │   └── UnknownJob                 no such compression job
    ├── Conflict                  409  the request is valid but the state refuses it
    │   └── VariantRefused             a stored variant failed its checks (checksum, files)
    ├── PayloadTooLarge           413
    ├── Overloaded                503  the model's queue is full; retry later
    └── StoreUnavailable          507  the variant store cannot be written (full, read-only);
                                       what served before still serves

Messages never carry a server's filesystem paths: :func:`scrub_paths` replaces them (the
service's home, the interpreter's and the package's directories, and absolute paths under the
usual system roots) with ``<path>`` when an error is built, so no body tells a client where
files are or whether a path exists. Nor do they carry a lone UTF-16 surrogate (:func:`printable`),
which no UTF-8 body can hold.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

# Absolute paths under the usual roots of a Linux filesystem (an URL path such as
# /admin/models/... or /v2/... is left alone).
_SYSTEM_PATH = re.compile(
    r"(?<![\w.~-])/(?:etc|proc|sys|root|home|tmp|var|usr|opt|work|dev|mnt|srv|run|lib|bin|"
    r"boot|media|snap|nix|private|Users)(?:/[^\s'\",:;()\[\]{}]*)?"
)


@lru_cache(maxsize=1)
def _private_roots() -> tuple[str, ...]:
    roots = {
        sys.prefix,
        sys.base_prefix,
        str(Path(__file__).resolve().parents[2]),  # the installed source tree
        tempfile.gettempdir(),
        os.path.expanduser("~"),
        os.environ.get("SLIMSERVE_HOME", ""),
        os.environ.get("BENTOML_HOME", ""),
    }
    return tuple(sorted((r for r in roots if len(r) > 1), key=len, reverse=True))


def scrub_paths(text: str) -> str:
    """``text`` with server filesystem paths replaced by ``<path>``.

    >>> scrub_paths("cannot read /etc/passwd: denied; see GET /admin/jobs")
    'cannot read <path>: denied; see GET /admin/jobs'
    """
    for root in _private_roots():
        if root in text:
            text = re.sub(re.escape(root) + r"[^\s'\",:;()\[\]{}]*", "<path>", text)
    return _SYSTEM_PATH.sub("<path>", text)


def printable(text: str) -> str:
    """``text`` with every lone UTF-16 surrogate written as its escape (``\\udfff``).

    A message may quote what a client sent, and JSON text may carry a lone surrogate as an
    escape; such a character has no UTF-8 form, so the answer's JSON could not be encoded and
    the client would get a 500 in place of the error meant for it.

    >>> printable("unknown model 'a\\ud800'")
    "unknown model 'a\\\\ud800'"
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ServiceError(Exception):
    """An error the service answers with ``status`` and ``{"error": message}``.

    ``headers``: extra response headers (a 413 closes the connection rather than read on).
    """

    status = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str, status: int | None = None) -> None:
        message = printable(scrub_paths(message))
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    status = 401


class AdminDisabled(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class UnknownModel(NotFound):
    """No model of that name is served."""


class UnknownVariant(NotFound):
    """The model has no stored variant of that id."""


class UnknownJob(NotFound):
    """No compression job of that id."""


class Conflict(ServiceError):
    status = 409


class VariantRefused(Conflict):
    """A stored variant failed its checks at load; the model keeps serving what it served."""


class PayloadTooLarge(ServiceError):
    """Over a size or row limit; the connection is closed so an unread body is not read on."""

    status = 413
    headers = {"Connection": "close"}  # noqa: RUF012 - read only


class Overloaded(ServiceError):
    """The model's request queue is full."""

    status = 503


class StoreUnavailable(ServiceError):
    """The variant store or a pointer cannot be written; nothing changed what serves."""

    status = 507
