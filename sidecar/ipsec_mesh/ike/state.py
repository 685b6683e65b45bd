"""The states of an IKE SA and the changes allowed between them (as h11's _state.py does).

`IkeSa.transition` is the only way to change an IKE SA's state; a change this table does
not list raises InvalidTransition: a bug in the engine, not something a peer can cause.
"""

from __future__ import annotations

import enum


class IkeState(enum.Enum):
    CONNECTING = "connecting"  # IKE_SA_INIT / IKE_INTERMEDIATE / IKE_AUTH under way
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # a successor exists; waiting for the old SA's delete
    DELETING = "deleting"
    CLOSED = "closed"


TRANSITIONS: dict[IkeState, frozenset[IkeState]] = {
    # IKE_AUTH completes (or a rekey creates the SA established); any failure closes.
    IkeState.CONNECTING: frozenset({IkeState.ESTABLISHED, IkeState.CLOSED}),
    # A rekey completes (ours or the peer's), or our delete starts.
    IkeState.ESTABLISHED: frozenset({IkeState.REKEYED, IkeState.DELETING, IkeState.CLOSED}),
    IkeState.REKEYED: frozenset({IkeState.CLOSED}),
    # While our delete is under way the peer may delete the SA after its rekey of it
    # completed: the children then move to the peer's successor (informational.py).
    IkeState.DELETING: frozenset({IkeState.REKEYED, IkeState.CLOSED}),
    IkeState.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A state change the table does not allow."""


def check_transition(old: IkeState, new: IkeState) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"IKE SA state {old.value} cannot become {new.value}")
