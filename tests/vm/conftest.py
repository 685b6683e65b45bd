"""Fixtures for the VM tier's data-plane tests (they run inside the VM; see README.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.vm.netns_guest import PeerPair, missing_requirements, peer_pair


@pytest.fixture
def peers() -> Iterator[PeerPair]:
    """Two fresh namespaces joined by a veth (IPv4 and IPv6), removed afterwards."""
    missing = missing_requirements()
    if missing:
        pytest.skip(f"namespace tests need: {', '.join(missing)}")
    with peer_pair() as pair:
        yield pair
