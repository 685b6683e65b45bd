"""Bounds-checked reading of network bytes.

Every read checks the remaining length and raises `ParseError`, so no
IndexError or struct.error can escape a parser built on this reader.
"""

from __future__ import annotations

import struct
from typing import Any

from .errors import ParseError


class Reader:
    """A cursor over bytes; `what` names the structure in error messages."""

    __slots__ = ("_data", "_pos", "_end", "what")

    def __init__(self, data: bytes, what: str):
        self._data = bytes(data)
        self._pos = 0
        self._end = len(self._data)
        self.what = what

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    @property
    def position(self) -> int:
        return self._pos

    # The readers below inline the bounds check: they run hundreds of times per message.
    def take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if n < 0 or end > self._end:
            raise ParseError(f"{self.what}: needs {n} bytes, {self.remaining} left")
        self._pos = end
        return self._data[pos:end]

    def skip(self, n: int) -> None:
        self.take(n)

    def u8(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise ParseError(f"{self.what}: needs 1 bytes, 0 left")
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        pos = self._pos
        if pos + 2 > self._end:
            raise ParseError(f"{self.what}: needs 2 bytes, {self.remaining} left")
        self._pos = pos + 2
        data = self._data
        return data[pos] << 8 | data[pos + 1]

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        """Several fixed-size fields at once (one bounds check instead of one per field)."""
        pos = self._pos
        end = pos + layout.size
        if end > self._end:
            raise ParseError(f"{self.what}: needs {layout.size} bytes, {self.remaining} left")
        self._pos = end
        return layout.unpack_from(self._data, pos)

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def sub(self, n: int, what: str) -> "Reader":
        """A reader over the next n bytes (a nested structure), consumed from this one."""
        return Reader(self.take(n), what)

    def expect_end(self) -> None:
        if self.remaining:
            raise ParseError(f"{self.what}: {self.remaining} unexpected trailing bytes")


MEMO_SIZE = 256
#: The longest input (bytes) whose parse result a memo keyed by those bytes may keep: what
#: peers really send is far shorter, and 256 kept results of 64 KiB inputs would be tens of MB.
MEMO_MAX_INPUT = 1024


def remember(memo: dict[Any, Any], key: Any, value: Any) -> None:
    """Store a result computed from network input in a memo of at most MEMO_SIZE entries.

    Emptied when full: a peer that varies what it sends costs the work it would have
    cost without the memo, never memory.
    """
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


def remember_parse(memo: dict[Any, Any], key: Any, value: Any, parsed: bytes, max_input: int = MEMO_MAX_INPUT) -> None:
    """`remember` the result of parsing `parsed`, unless that input is longer than `max_input`."""
    if len(parsed) <= max_input:
        remember(memo, key, value)


#: What `recall_pair` returns for a pair it has no result for.
MISSING: Any = object()


def recall_pair(memo: dict[tuple[int, int], Any], a: Any, b: Any) -> Any:
    """The result `remember_pair` kept for exactly these two objects (by identity), or MISSING.

    For results of pure functions of immutable objects that are cheaper to look up by identity
    than to hash (records hash field by field in Python)."""
    entry = memo.get((id(a), id(b)))
    if entry is not None and entry[0] is a and entry[1] is b:
        return entry[2]
    return MISSING


def remember_pair(memo: dict[tuple[int, int], Any], a: Any, b: Any, value: Any) -> None:
    """Keep `value` for the pair (a, b); the entry holds both objects, so their ids stay theirs."""
    remember(memo, (id(a), id(b)), (a, b, value))


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")
