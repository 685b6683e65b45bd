"""Mesh mode's first steps: the first peer map, a certificate for a key made here, a PeerSet.

Transient trouble (the operator not up yet, or not knowing the pod yet: HTTP 503,
connection errors, timeouts) is retried with `meshapi.retry`'s backoff; a refusal
(`meshapi.retry.REFUSALS`: wrong token audience, forged or foreign token, wrong API URL)
fails at once with `BootstrapError`, whose `exit_code` the CLI returns.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..meshapi.errors import MeshApiRequestError
from ..meshapi.model import PeerMap
from ..meshapi.retry import retry
from .config import IkeSettings
from .credentials import Credential, credential_from, new_key_and_csr
from .peers import CredentialError, PeerSet, PeerSetError

log = logging.getLogger("ipsec_mesh.agent")

T = TypeVar("T")

EXIT_CONFIG = 2  # settings or peer map unusable
EXIT_REFUSED = 3  # the mesh API refused us (token, identity)
EXIT_CRASHED = 1  # a mesh-mode loop failed (a bug): let the kubelet restart us


class BootstrapError(Exception):
    """Mesh mode cannot go on; the CLI prints the message and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


async def with_backoff(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`call()` until it succeeds (`meshapi.retry`); a refusal ends mesh mode with EXIT_REFUSED."""
    try:
        return await retry(call, what)
    except MeshApiRequestError as exc:  # only a refusal gets out of retry
        hint = " (is the token's audience the operator's, and the pod in the mesh?)" \
            if exc.status in (401, 403) else ""
        raise BootstrapError(f"mesh API refused {what}: {exc}{hint}", EXIT_REFUSED) from None


def localized(peer_map: PeerMap, pod_name: str, pod_namespace: str, pod_ips: tuple[str, ...]) -> PeerMap:
    """Check the map is this pod's; take POD_IPS as local addresses if the map has none yet."""
    local = peer_map.local
    for mine, theirs, what in ((pod_name, local.pod, "POD_NAME"), (pod_namespace, local.namespace, "POD_NAMESPACE")):
        if mine and theirs and mine != theirs:
            raise PeerSetError(f"the peer map is for {theirs!r}, but {what} is {mine!r}")
    if local.addresses or not pod_ips:
        return peer_map
    addresses = tuple(ipaddress.ip_address(ip) for ip in pod_ips)
    return dataclasses.replace(peer_map, local=dataclasses.replace(local, addresses=addresses))


async def issue_credential(client, identity: str) -> Credential:
    """A new P-256 key (memory only) and the operator's certificate for it."""
    key, csr = new_key_and_csr(identity)
    issued = await client.sign_csr(csr)
    try:
        return credential_from(key, issued)
    except CredentialError as exc:
        raise MeshApiRequestError(f"certificate response unusable: {exc}") from None


def peer_set(peer_map: PeerMap, ike: IkeSettings, credential: Credential) -> PeerSet:
    if not peer_map.local.addresses:
        raise PeerSetError("the peer map names no local address and POD_IPS is not set")
    return PeerSet(peer_map, ike, private_key=credential.private_key, chain=credential.chain)
