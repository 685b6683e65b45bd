"""IKE SA state changes go through one function and a table of allowed changes (as h11's
_state.py does): a change the table does not list is a programming error, raised at once."""

from __future__ import annotations

import pytest

from ipsec_mesh.ike import IkeSa
from ipsec_mesh.ike.state import TRANSITIONS, IkeState, InvalidTransition
from tests.support.ikesim import Network, establish, pair


def test_every_state_has_a_row_and_closed_is_final():
    assert set(TRANSITIONS) == set(IkeState)
    assert TRANSITIONS[IkeState.CLOSED] == frozenset()
    assert all(IkeState.CLOSED in allowed for state, allowed in TRANSITIONS.items() if state != IkeState.CLOSED)


def _established() -> IkeSa:
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    return a.established[0]


def test_a_change_outside_the_table_raises_and_leaves_the_state():
    sa = _established()
    with pytest.raises(InvalidTransition):
        sa.transition(IkeState.CONNECTING)
    assert sa.state == IkeState.ESTABLISHED
    sa.transition(IkeState.CLOSED)
    with pytest.raises(InvalidTransition):
        sa.transition(IkeState.ESTABLISHED)
    assert sa.state == IkeState.CLOSED


def test_state_cannot_be_assigned_around_the_table():
    sa = _established()
    with pytest.raises(AttributeError):
        sa.state = IkeState.CONNECTING  # type: ignore[misc]


def test_the_engine_only_makes_changes_the_table_lists(monkeypatch):
    seen: list[tuple[IkeState, IkeState]] = []
    real = IkeSa.transition

    def record(self, new):
        seen.append((self.state, new))
        real(self, new)

    monkeypatch.setattr(IkeSa, "transition", record)
    net = Network()
    a, b, a_cfg, _ = pair(net)
    establish(net, a, a_cfg)
    a.endpoint.rekey_ike(a.established[0].label, net.now)
    net.run(30)
    b.endpoint.delete_ike(b.established[0].label, net.now)
    net.run(30)
    assert (IkeState.CONNECTING, IkeState.ESTABLISHED) in seen
    assert (IkeState.ESTABLISHED, IkeState.REKEYED) in seen
    assert (IkeState.ESTABLISHED, IkeState.DELETING) in seen
    assert all(new in TRANSITIONS[old] for old, new in seen)
