"""Per-peering pre-shared keys: generated once, kept in a Secret owned by the peering, rotated with overlap.

Secret layout: ``psk-<id>`` holds each key's raw bytes, ``generations.json``
the rotation state (ids and times only, see rotation.py).
"""

from __future__ import annotations

import json
import secrets

from ipsec_mesh.meshapi import PskKey

from .rotation import KeyRing, RotationStateError

KEY_BYTES = 32
GENERATIONS_KEY = "generations.json"
#: A new key is accepted everywhere for this long before anyone initiates with it.
MAX_PROPAGATION = 300.0


class PskStateError(Exception):
    """The PSK Secret holds something unusable."""


def secret_name(peering_name: str) -> str:
    return f"{peering_name}-psk"[:253]


def propagation_for(overlap: float) -> float:
    return min(MAX_PROPAGATION, overlap / 2)


class PskRing:
    def __init__(self, ring: KeyRing, values: dict[str, bytes]):
        self.ring = ring
        self.values = values

    @classmethod
    def create(cls, now: float) -> PskRing:
        psk = cls(KeyRing(), {})
        psk._add(now, 0, 0)
        return psk

    @classmethod
    def from_secret_data(cls, data: dict[str, bytes]) -> PskRing:
        try:
            ring = KeyRing.from_list(json.loads(data[GENERATIONS_KEY]))
            values = {g.id: data[f"psk-{g.id}"] for g in ring.generations}
        except (KeyError, ValueError, RotationStateError) as exc:
            raise PskStateError(f"the PSK Secret is unusable: {exc!r}") from None
        if any(len(value) != KEY_BYTES for value in values.values()):
            raise PskStateError("a key in the PSK Secret has the wrong length")
        return cls(ring, values)

    def copy(self) -> PskRing:
        return PskRing(self.ring, dict(self.values))  # KeyRing is immutable: rotations replace it

    def to_secret_data(self) -> dict[str, bytes]:
        data = {f"psk-{gid}": value for gid, value in self.values.items()}
        data[GENERATIONS_KEY] = json.dumps(self.ring.to_list()).encode()
        return data

    def _add(self, now: float, propagation: float, overlap: float) -> None:
        gid = f"k{int(now)}-{secrets.token_hex(3)}"
        self.ring = self.ring.rotate(now, gid, propagation, overlap)
        self.values[gid] = secrets.token_bytes(KEY_BYTES)

    def rotate_if_due(self, now: float, interval: float, overlap: float) -> bool:
        changed = False
        pruned = self.ring.prune(now)
        if pruned != self.ring:
            self.ring = pruned
            self.values = {g.id: self.values[g.id] for g in pruned.generations}
            changed = True
        if self.ring.due(now, interval):
            self._add(now, propagation_for(overlap), overlap)
            changed = True
        return changed

    def keys(self, now: float) -> tuple[PskKey, ...]:
        """What sidecars get: every accepted key, the active one marked for initiating."""
        active = self.ring.active(now)
        return tuple(
            PskKey(
                id=g.id,
                secret=self.values[g.id],
                initiate=active is not None and g.id == active.id,
                expires_at=None if g.retire_at is None else int(g.retire_at),
            )
            for g in self.ring.accepted(now)
        )

    def active_id(self, now: float) -> str | None:
        active = self.ring.active(now)
        return None if active is None else active.id

    def next_change(self, now: float, interval: float) -> float:
        """When `keys()` or a rotation next changes by itself (for scheduling)."""
        times = [g.activate_at for g in self.ring.generations if g.activate_at > now]
        times += [g.retire_at for g in self.ring.generations if g.retire_at is not None and g.retire_at > now]
        newest = self.ring.newest()
        if newest is not None:
            times.append(newest.created_at + interval)
        return min(times, default=now + interval)
