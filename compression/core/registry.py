"""Named pipeline steps: rebuild steps, importance criteria and precision modes register here.

The pipeline never lists its options in an if/elif chain: each option is a function registered
under its name, and the profile's allowed values are the registry's names (the way torchao's
``quantize_`` dispatches a config to its registered handler). Adding an importance criterion
is one new function, registered on ``compression.structure.importance.CRITERIA``::

    @CRITERIA.register("l1")
    def l1(ctx):
        return {u.name: ... for u in ctx.units}  # per-channel scores of each unit

The built-in options register when their module is imported; :mod:`compression.profiles`
imports them all before it validates a profile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Functions by name for one kind of pipeline option (``kind`` names it in errors).

    Iterating yields the names in registration order, so ``name in registry`` and
    ``list(registry)`` read like a tuple of the allowed values.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering a function under ``name`` (a second one with it is an error)."""

        def add(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        """The function registered as ``name``; the error lists what is registered."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; expected one of {list(self._entries)}"
            ) from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
