"""The peer-map model shared by the operator and the sidecar, and the sidecar's mesh API client.

The operator computes a `PeerMap` per pod and serves it as JSON; the sidecar
reads it from the mesh API (`MeshApiClient`) or, without Kubernetes, from a
YAML file (`load_peer_map_file`). Both paths end in the same validated
`PeerMap` structure.
"""

from typing import Any

from .errors import MeshApiError, MeshApiRequestError, PeerMapError, ProposalError
from .identity import pod_fqdn, service_account_uri
from .model import (
    MAX_SERVICE_ENDPOINTS,
    MAX_SERVICE_PORTS,
    MAX_SERVICES,
    AuthKind,
    Enforcement,
    Lifetimes,
    LocalIdentity,
    Peer,
    PeeringPolicy,
    PeerMap,
    PskKey,
    ServiceEndpoint,
    ServiceEntry,
    ServicePort,
    ServiceProtocol,
    SessionAffinity,
    load_peer_map_file,
)
from .proposals import MESH_DEFAULT_ESP, MESH_DEFAULT_IKE, MESH_DEFAULT_IKE_PROPOSALS, parse_esp, parse_ike
from .status import PeeringStatus, StatusReport

__all__ = [
    "IssuedCertificate", "MeshApiClient", "PeeringStatus", "StatusReport",
    "AuthKind", "MESH_DEFAULT_ESP", "MESH_DEFAULT_IKE", "MESH_DEFAULT_IKE_PROPOSALS", "Enforcement",
    "Lifetimes", "LocalIdentity", "MeshApiError", "MeshApiRequestError", "Peer", "PeerMap",
    "PeerMapError", "PeeringPolicy", "ProposalError", "PskKey", "load_peer_map_file", "parse_esp", "parse_ike",
    "pod_fqdn", "service_account_uri",
    "MAX_SERVICES", "MAX_SERVICE_ENDPOINTS", "MAX_SERVICE_PORTS", "ServiceEndpoint", "ServiceEntry", "ServicePort",
    "ServiceProtocol", "SessionAffinity",
]


def __getattr__(name: str) -> Any:
    # The HTTPS client pulls in ssl and the HTTP code: only load it for the code that talks to the API
    # (a standalone sidecar never does, and its start-up time matters).
    if name in ("IssuedCertificate", "MeshApiClient"):
        from . import client

        return getattr(client, name)
    raise AttributeError(name)
