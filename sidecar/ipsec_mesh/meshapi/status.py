"""The status a sidecar reports to the operator, per peering policy of its peer map."""

from __future__ import annotations

from typing import Any

from ..records import record
from . import fields

MAX_REPORTED_PEERINGS = 4096


@record(frozen=True)
class PeeringStatus:
    #: The PeeringPolicy name from the peer map (``ns/peering`` or ``ns/peering/remote``).
    name: str
    established_sas: int = 0
    failed_peers: int = 0
    last_error: str = ""


@record(frozen=True)
class StatusReport:
    #: The peer-map version the sidecar has applied.
    applied_version: int
    peerings: tuple[PeeringStatus, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "appliedVersion": self.applied_version,
            "peerings": [
                {"name": p.name, "establishedSAs": p.established_sas, "failedPeers": p.failed_peers,
                 "lastError": p.last_error}
                for p in self.peerings
            ],
        }

    @classmethod
    def from_dict(cls, value: Any) -> StatusReport:
        doc = fields.obj(value, "", {"appliedVersion"}, {"peerings"})
        return cls(
            applied_version=fields.integer(doc["appliedVersion"], "appliedVersion", 0, 2**63 - 1),
            peerings=fields.array(doc.get("peerings", []), "peerings", _peering, MAX_REPORTED_PEERINGS),
        )


def _peering(value: Any, path: str) -> PeeringStatus:
    doc = fields.obj(value, path, {"name"}, {"establishedSAs", "failedPeers", "lastError"})
    return PeeringStatus(
        name=fields.string(doc["name"], f"{path}.name", 253),
        established_sas=fields.integer(doc.get("establishedSAs", 0), f"{path}.establishedSAs", 0, 1_000_000),
        failed_peers=fields.integer(doc.get("failedPeers", 0), f"{path}.failedPeers", 0, 1_000_000),
        last_error=fields.printable(fields.string(doc.get("lastError", ""), f"{path}.lastError", 1024, 0)),
    )
