"""`remote.federation` in a peering: where the other operator publishes its trust bundle and how to
trust it first. Pure parsing; the fetching and the bundle endpoint are controller/federation.py."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ipsec_mesh.meshapi import PeerMapError, fields
from ipsec_mesh.meshapi.identity import check_dns_name

DEFAULT_REFRESH = 300
MIN_REFRESH = 5


@dataclass(frozen=True)
class FederationSpec:
    """`remote.federation`: where the other operator publishes its bundle and how to trust it first."""

    endpoint: str
    trust_domain: str
    #: (kind, name, key) of the ConfigMap/Secret holding the bootstrap bundle (PEM).
    bootstrap_ref: tuple[str, str, str]
    refresh_interval: int = DEFAULT_REFRESH


def check_endpoint_url(value: Any, path: str) -> str:
    url = fields.string(value, path, 2048)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PeerMapError(path, f"not a URL: {exc}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise PeerMapError(path, "must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise PeerMapError(path, "must not carry credentials or a fragment")
    if port == 0:
        raise PeerMapError(path, "port 0 is not a port")
    return url


def parse_federation(value: Any, path: str, parse_ref: Callable[[Any, str, str], tuple[str, str, str]]
                     ) -> FederationSpec:
    doc = fields.obj(value, path, {"endpoint", "trustDomain", "bootstrapBundle"}, {"refreshInterval"})
    refresh = fields.duration(doc.get("refreshInterval", f"{DEFAULT_REFRESH}s"), f"{path}.refreshInterval")
    if refresh < MIN_REFRESH:
        raise PeerMapError(f"{path}.refreshInterval", f"at least {MIN_REFRESH}s")
    return FederationSpec(
        endpoint=check_endpoint_url(doc["endpoint"], f"{path}.endpoint"),
        trust_domain=check_dns_name(doc["trustDomain"], f"{path}.trustDomain"),
        bootstrap_ref=parse_ref(doc["bootstrapBundle"], f"{path}.bootstrapBundle", "ca.crt"),
        refresh_interval=refresh,
    )
