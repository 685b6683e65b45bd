"""The data plane as the agent sees it: where CHILD_SA keys go, and where ACQUIREs come from.

`NullDataPlane` installs nothing (IKE-only runs on kernels without ESP, tests,
benchmarks) but keeps the same bookkeeping, so the status endpoint shows what would
be installed. The kernel implementation is `xfrm_dataplane.XfrmDataPlane`.
"""

from __future__ import annotations

import socket
from typing import Protocol

from ..ike import ChildSaDeleted, ChildSaInfo, ChildSaOutboundRetired, ChildSaRef
from ..records import record


@record(frozen=True)
class Acquire:
    """The kernel wants an SA for traffic from `local` to `remote`."""

    local: str
    remote: str


@record(frozen=True)
class SoftExpire:
    """An SA reached its soft lifetime (bytes or packets): rekey it."""

    inbound_spi: int


@record(frozen=True)
class HardExpire:
    inbound_spi: int


@record(frozen=True)
class NatMapping:
    """Authenticated ESP-in-UDP for this inbound SA arrived from a new source (XFRM MAPPING)."""

    inbound_spi: int
    remote: str
    port: int


@record(frozen=True)
class PolicyExpired:
    """One of our policies reached a lifetime it should not have (ours have none)."""

    policy: str  # selector and direction, for the log
    hard: bool


class DataPlane(Protocol):
    name: str

    def start(self, peers) -> None: ...
    def update_peers(self, old, new) -> None: ...
    def prepare_socket(self, sock: socket.socket, natt: bool) -> None: ...
    def install_inbound(self, child: ChildSaInfo) -> None: ...
    def install_outbound(self, child: ChildSaInfo) -> None: ...
    def retire_outbound(self, retired: ChildSaOutboundRetired) -> None: ...
    def update_encap(self, child: ChildSaInfo) -> None: ...
    def remove(self, deleted: ChildSaDeleted) -> None: ...
    def packets(self, child: ChildSaRef) -> int | None: ...
    def inbound_bytes(self, child: ChildSaRef) -> int | None: ...
    def fileno(self) -> int | None: ...
    def read_events(self) -> list: ...
    def stop(self) -> None: ...
    def status(self) -> dict: ...
    def not_ready_reason(self) -> str | None: ...


class NullDataPlane:
    """Records what would be installed; touches no kernel state."""

    name = "none"

    def __init__(self) -> None:
        self.inbound: dict[int, ChildSaInfo] = {}
        self.outbound: dict[int, ChildSaInfo] = {}
        self.peers = None

    def start(self, peers) -> None:
        self.peers = peers

    def update_peers(self, old, new) -> None:
        self.peers = new

    def prepare_socket(self, sock: socket.socket, natt: bool) -> None:
        pass

    def install_inbound(self, child: ChildSaInfo) -> None:
        self.inbound[child.inbound_spi] = child

    def install_outbound(self, child: ChildSaInfo) -> None:
        self.outbound[child.outbound_spi] = child

    def retire_outbound(self, retired: ChildSaOutboundRetired) -> None:
        self.outbound.pop(retired.outbound_spi, None)

    def update_encap(self, child: ChildSaInfo) -> None:
        for table, spi in ((self.inbound, child.inbound_spi), (self.outbound, child.outbound_spi)):
            if spi in table:
                table[spi] = child

    def remove(self, deleted: ChildSaDeleted) -> None:
        self.inbound.pop(deleted.inbound_spi, None)
        self.outbound.pop(deleted.outbound_spi, None)

    def packets(self, child: ChildSaRef) -> int | None:
        return None  # no kernel, no counters: CHILD_SAs are never found idle

    def inbound_bytes(self, child: ChildSaRef) -> int | None:
        return None  # no kernel: liveness rests on IKE alone

    def fileno(self) -> int | None:
        return None

    def read_events(self) -> list:
        return []

    def stop(self) -> None:
        self.inbound.clear()
        self.outbound.clear()

    def not_ready_reason(self) -> str | None:
        return None  # installs nothing, Service translation included: nothing to fail

    def status(self) -> dict:
        return {"dataplane": self.name, "inbound_sas": len(self.inbound), "outbound_sas": len(self.outbound)}
