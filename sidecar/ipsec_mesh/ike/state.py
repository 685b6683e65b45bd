"""The states of an IKE SA."""

from __future__ import annotations

import enum


class IkeState(enum.Enum):
    CONNECTING = "connecting"  # IKE_SA_INIT / IKE_INTERMEDIATE / IKE_AUTH under way
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # a successor exists; waiting for the old SA's delete
    DELETING = "deleting"
    CLOSED = "closed"
