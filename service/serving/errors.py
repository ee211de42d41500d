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
    └── Overloaded                503  the model's queue is full; retry later
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error the service answers with ``status`` and ``{"error": message}``."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
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
    status = 413


class Overloaded(ServiceError):
    """The model's request queue is full."""

    status = 503
