"""Indexes that keep the endpoint's work per datagram independent of how many IKE SAs exist.

A sidecar may hold thousands of IKE SAs (and a peer may open many of them from one
address). Scanning all of them on every datagram made the responder's cost per IKE
SA grow with the number of SAs; these structures answer the endpoint's questions
(which SAs does this peer have, how many are half-open, which timer is next) from
indexes that are updated only for the SAs a call touched.
"""

from __future__ import annotations

import heapq
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)  # what identifies an item (the endpoint: our IKE SPI)
V = TypeVar("V")  # the item itself


class TimerQueue(Generic[K]):
    """Earliest deadline among many keys; a key's deadline may be replaced or cleared at any time.

    A heap with lazy invalidation: replaced deadlines stay in the heap until they
    surface, and are skipped because they no longer match the key's current one.
    """

    def __init__(self) -> None:
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._pushes = 0

    def set(self, key: K, due: float | None) -> None:
        if due is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == due:
            return
        self._due[key] = due
        self._pushes += 1
        heapq.heappush(self._heap, (due, self._pushes, key))
        if len(self._heap) > 4 * len(self._due) + 64:
            self._compact()

    def earliest(self) -> float | None:
        heap = self._heap
        while heap:
            due, _, key = heap[0]
            if self._due.get(key) == due:
                return due
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[K]:
        """Keys whose deadline is at or before `now`, earliest first; their deadlines are cleared."""
        keys: list[K] = []
        while (due := self.earliest()) is not None and due <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._due[key]
            keys.append(key)
        return keys

    def _compact(self) -> None:
        self._heap = [(due, n, key) for n, (key, due) in enumerate(self._due.items())]
        heapq.heapify(self._heap)
        self._pushes = len(self._heap)


class PeerIndex(Generic[K, V]):
    """Items by peer address, split into those we initiated and those the peer initiated."""

    def __init__(self) -> None:
        self._by_address: dict[str, tuple[dict[K, V], dict[K, V]]] = {}
        self._address_of: dict[K, str] = {}

    def put(self, key: K, item: V, address: str, initiated_by_us: bool) -> None:
        """Add `item`, or move it when its peer address changed."""
        old = self._address_of.get(key)
        if old == address:
            return
        if old is not None:
            self.remove(key)
        self._address_of[key] = address
        ours, theirs = self._by_address.setdefault(address, ({}, {}))
        (ours if initiated_by_us else theirs)[key] = item

    def remove(self, key: K) -> None:
        address = self._address_of.pop(key, None)
        if address is None:
            return
        ours, theirs = self._by_address[address]
        ours.pop(key, None)
        theirs.pop(key, None)
        if not ours and not theirs:
            del self._by_address[address]

    def initiated_by_us(self, address: str) -> list[V]:
        entry = self._by_address.get(address)
        return list(entry[0].values()) if entry else []

    def all(self, address: str) -> list[V]:
        entry = self._by_address.get(address)
        return [*entry[0].values(), *entry[1].values()] if entry else []


class HalfOpenCount(Generic[K]):
    """Responder IKE SAs still negotiating, in total and per source address, oldest first."""

    def __init__(self) -> None:
        self._source: dict[K, str] = {}
        self._keys: dict[str, dict[K, None]] = {}  # source -> its keys in the order added

    @property
    def total(self) -> int:
        return len(self._source)

    def count(self, source: str) -> int:
        return len(self._keys.get(source, ()))

    def add(self, key: K, source: str) -> None:
        if key not in self._source:
            self._source[key] = source
            self._keys.setdefault(source, {})[key] = None

    def discard(self, key: K) -> None:
        source = self._source.pop(key, None)
        if source is not None:
            keys = self._keys[source]
            del keys[key]
            if not keys:
                del self._keys[source]

    def oldest_of_heaviest(self) -> tuple[K, int] | None:
        """The oldest key of the source holding the most (ties: the source that started
        holding first), and how many that source holds. O(sources), for a full table only."""
        if not self._keys:
            return None
        keys = max(self._keys.values(), key=len)
        return next(iter(keys)), len(keys)
