"""Overlapping key generations, shared by the mesh CA and the per-peering PSKs.

A rotation adds a new generation that is *accepted* at once but *used* (to
sign, or to initiate with) only after `propagation`, so every sidecar knows it
before anyone depends on it. The generation it replaces stays accepted for
`grace` after that (the longest leaf lifetime for a CA, the overlap for a
PSK), then it is pruned. Pure logic: time is always passed in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


class RotationStateError(Exception):
    """Persisted rotation state is malformed."""


@dataclass(frozen=True)
class Generation:
    id: str
    created_at: float
    activate_at: float
    #: When it stops being accepted; None while it is the newest active generation.
    retire_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any) -> Generation:
        try:
            retire = value.get("retire_at")
            return cls(
                id=str(value["id"]),
                created_at=float(value["created_at"]),
                activate_at=float(value["activate_at"]),
                retire_at=None if retire is None else float(retire),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RotationStateError(f"bad generation record: {exc!r}") from None


@dataclass(frozen=True)
class KeyRing:
    generations: tuple[Generation, ...] = ()

    def active(self, now: float) -> Generation | None:
        """The generation to use now: the newest one whose activation time has come."""
        usable = [g for g in self.accepted(now) if g.activate_at <= now]
        return max(usable, key=lambda g: g.activate_at, default=None)

    def accepted(self, now: float) -> tuple[Generation, ...]:
        """Every generation a peer may use now, newest first."""
        live = [g for g in self.generations if g.retire_at is None or g.retire_at > now]
        return tuple(sorted(live, key=lambda g: g.created_at, reverse=True))

    def newest(self) -> Generation | None:
        return max(self.generations, key=lambda g: g.created_at, default=None)

    def due(self, now: float, interval: float) -> bool:
        newest = self.newest()
        return newest is None or newest.created_at + interval <= now

    def rotate(self, now: float, new_id: str, propagation: float, grace: float) -> KeyRing:
        """Add generation `new_id`; retire the ones it supersedes `grace` after it activates."""
        first = not self.generations
        activate_at = now if first else now + propagation
        retired = tuple(
            g if g.retire_at is not None else replace(g, retire_at=activate_at + grace) for g in self.generations
        )
        return KeyRing(retired + (Generation(new_id, now, activate_at),))

    def prune(self, now: float) -> KeyRing:
        return KeyRing(tuple(g for g in self.generations if g.retire_at is None or g.retire_at > now))

    def to_list(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self.generations]

    @classmethod
    def from_list(cls, value: Any) -> KeyRing:
        if not isinstance(value, list):
            raise RotationStateError("generations must be a list")
        return cls(tuple(Generation.from_dict(item) for item in value))
