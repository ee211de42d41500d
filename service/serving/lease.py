"""A lease in a store: one replica of a fleet compresses a (model, profile, hardware) key.

The lease on ``key`` is a numbered series of objects ``leases/<key>/<generation>.json``, each
holding its holder's id and the wall-clock time it expires. The highest generation is the
lease; only its holder writes it. To take a free or expired lease a replica *creates* the next
generation (``Store.create``: exactly one of the replicas racing for a number gets it). The
holder renews by rewriting its generation with a later expiry, and learns it lost the lease
when a higher generation exists. A holder that dies (SIGKILL, a lost node) stops renewing, its
generation expires and the next replica to look takes the next one::

    lease = Lease(store, key, holder="pod-a", ttl_s=60)
    if lease.acquire():
        ...            # compress, calling lease.renew() every ttl_s / 3
        lease.release()

What it assumes: the store's ``create`` is atomic (see ``service.serving.stores``); replicas'
clocks agree to well within ``ttl_s`` (NTP keeps them within milliseconds to a second; the
default ttl is a minute); a holder renews more often than ``ttl_s`` (a process stalled for
longer loses the lease, and at most one duplicate compression follows: it sees the higher
generation at its next renewal and stops).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from service.serving.stores import Store


class Lease:
    """This replica's view of the lease on one key."""

    def __init__(
        self,
        store: Store,
        key: str,
        holder: str,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self.clock = clock
        self.generation: int | None = None  # held: the generation this replica created

    def _name(self, generation: int) -> str:
        return f"leases/{self.key}/{generation:010d}.json"

    def _record(self, expires: float) -> bytes:
        return json.dumps({"holder": self.holder, "expires": expires}).encode()

    def current(self) -> tuple[int, dict] | None:
        """The highest generation and its record (holder, expires), or None: never taken.

        A record that cannot be read (being replaced, or garbage) counts as expired.
        """
        numbers = []
        for name in self.store.names(f"leases/{self.key}"):
            stem = name.rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit():
                numbers.append(int(stem))
        if not numbers:
            return None
        top = max(numbers)
        try:
            record = json.loads(self.store.read(self._name(top)) or b"")
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            record = {"holder": None, "expires": 0.0}
        return top, record

    @property
    def held(self) -> bool:
        return self.generation is not None

    def acquire(self) -> bool:
        """Take the lease if it is free or expired (or already ours); True if held now."""
        if self.held:
            return self.renew()
        cur = self.current()
        if cur is not None and float(cur[1].get("expires", 0)) > self.clock():
            return False
        generation = 1 if cur is None else cur[0] + 1
        if not self.store.create(self._name(generation), self._record(self._expiry())):
            return False  # another replica took this generation first
        self.generation = generation
        for older in range(max(1, generation - 3), generation):  # the last few, tidily
            self.store.delete(self._name(older))
        return True

    def _expiry(self) -> float:
        return self.clock() + self.ttl_s

    def renew(self) -> bool:
        """Push the expiry out; False (and no longer held) if another replica took over."""
        if not self.held:
            return False
        cur = self.current()
        if cur is None or cur[0] != self.generation:
            self.generation = None
            return False
        self.store.write(self._name(self.generation), self._record(self._expiry()))
        return True

    def release(self) -> None:
        """Give the lease up now (expired at once), where it is still ours."""
        if not self.held:
            return
        cur = self.current()
        if cur is not None and cur[0] == self.generation:
            self.store.write(self._name(self.generation), self._record(0.0))
        self.generation = None
