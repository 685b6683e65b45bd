"""The standalone operator's admin endpoint: what it knows, at a glance, for the admin token only.

    GET /v1/admin/overview   (Authorization: Bearer <admin-token>)  -> JSON
    POST /v1/admin/rotate-ca (the same token) -> the overview's "ca" after starting a CA rotation now

Pods with their identity, peer-map version, peerings, the certificate the
mesh API issued them and their network namespace on this node where the YAML names
one (where `ipsec-mesh explain` reads the sidecar's local /status); peerings with members,
peers and sidecar health; the CA; the Service and EndpointSlice objects.
Never any key material.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from .. import metrics
from ..controller.runtime import OperatorRuntime
from .tokens import AdminToken

OVERVIEW_PATH = "/v1/admin/overview"
ROTATE_CA_PATH = "/v1/admin/rotate-ca"


def overview(runtime: OperatorRuntime, peering_keys: Iterable[tuple[str, str]],
             issued: dict[tuple[str, str], dict[str, Any]],
             pod_netns: Mapping[tuple[str, str], str],
             services: Iterable[tuple[str, Any]] = ()) -> dict[str, Any]:
    now = runtime.clock()
    index = runtime.index
    pods = []
    for info in sorted(index.pods(), key=lambda p: p.key):
        report = runtime.reports.get(info.key)
        pods.append({
            "namespace": info.namespace, "name": info.name, "serviceAccount": info.service_account,
            "identity": info.identity(runtime.config.trust_domain), "ips": list(info.ips),
            "peerMapVersion": index.version(info.key),
            "peerings": [f"{ns}/{name}" for ns, name in sorted(index.peerings_of(info.key))],
            "certificate": issued.get(info.key),
            "netns": pod_netns.get(info.key),
            "lastReport": None if report is None else {"at": int(report[0]),
                                                       "appliedVersion": report[1].applied_version},
        })
    peerings = []
    for key in sorted(peering_keys):
        spec = index.peering(key)
        if spec is None:
            continue
        ring = runtime.psk.get(key)
        peerings.append({
            "namespace": key[0], "name": key[1], "auth": spec.auth.value, "enforcement": spec.enforcement.value,
            "members": [f"{ns}/{name}" for ns, name in sorted(index.members(key))],
            "peers": [f"{ns}/{name}" for ns, name in sorted(index.peer_pods(key))],
            "pskKeyId": None if ring is None else ring.active_id(now),
            "health": dataclasses.asdict(runtime.health(key)),
            "federation": [state.to_status(remote) for remote, state in sorted(runtime.federation.of(key).items())],
            # What `explain POD remote/...` (or a remote address) needs; the bundles themselves stay here.
            "remotes": [{"name": r.name, "cidrs": [str(c) for c in r.cidrs], "identities": list(r.identities),
                         "trust": r.trust} for r in spec.remotes],
        })
    ca = runtime.ca
    active = None if ca is None else ca.ring.active(now)
    return {
        "trustDomain": runtime.config.trust_domain,
        "ca": None if ca is None or active is None else {
            "active": active.id,
            "notAfter": int(ca.active_certificate(now).not_valid_after_utc.timestamp()),
            "trustBundleSize": len(ca.trust_bundle(now)),
            "generations": [{"id": g.id, "activateAt": int(g.activate_at),
                             "retireAt": None if g.retire_at is None else int(g.retire_at)}
                            for g in ca.ring.accepted(now)],
        },
        "pods": pods,
        "peerings": peerings,
        # The Service and EndpointSlice objects of the YAML (what `explain POD svc/NS/NAME` reads).
        "services": [{"kind": kind, "object": body} for kind, body in services],
    }


def add_admin_routes(app: web.Application, token: AdminToken, build: Callable[[], dict[str, Any]],
                     rotate_ca: Callable[[], Awaitable[str | None]] | None = None) -> None:
    """The overview; with `rotate_ca` (returns a reason to refuse, or None) the rotation request too."""

    def refused(request: web.Request) -> web.Response | None:
        if token.allows(request.headers.get("Authorization")):
            return None
        metrics.REQUESTS_REFUSED.labels("unauthenticated").inc()
        return web.json_response({"error": "the admin endpoint needs the admin token"}, status=401)

    async def handle(request: web.Request) -> web.StreamResponse:
        return refused(request) or web.json_response(build())

    async def rotate(request: web.Request) -> web.StreamResponse:
        if (answer := refused(request)) is not None:
            return answer
        problem = await rotate_ca()
        if problem is not None:
            return web.json_response({"error": problem}, status=409)
        return web.json_response(build()["ca"])

    app.router.add_get(OVERVIEW_PATH, handle)
    if rotate_ca is not None:
        app.router.add_post(ROTATE_CA_PATH, rotate)
