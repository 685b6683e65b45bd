"""Mesh-mode sidecars against the real operator mesh API (api_fixture), on loopback addresses."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ipsec_mesh.agent.config import IkeSettings, SidecarSettings
from ipsec_mesh.agent.dataplane import NullDataPlane
from ipsec_mesh.agent.mesh_mode import MeshSidecar
from ipsec_mesh.agent.mesh_settings import MeshSettings
from ipsec_mesh.meshapi.client import MeshApiClient
from ipsec_mesh_operator.controller.index import PodInfo
from tests.support import fake_tokens
from tests.support.loopback import http_get  # noqa: F401  (re-exported for the mesh tests)
from tests.support.loopback import wait_for as poll

# Per-process loopback addresses and IKE port, so parallel runs by others do not collide.
_OCTET = 20 + os.getpid() % 200
IKE_PORT = 30000 + os.getpid() % 20000


def loopback(host: int) -> str:
    return f"127.{_OCTET}.{os.getpid() % 250}.{host}"


def pod(name: str, app: str, host: int) -> PodInfo:
    return PodInfo("prod", name, f"uid-{name}", app, {"app": app}, (loopback(host),))


def api_url(servers) -> str:
    return f"https://localhost:{servers.ports['api']}"


def ca_bundle(runtime) -> str:
    return "".join(runtime.index.trust_bundle)


def write_token(directory: Path, info: PodInfo, **kwargs) -> Path:
    path = directory / f"{info.name}.token"
    path.write_text(fake_tokens.issue(info.namespace, info.service_account, info.name, info.uid, **kwargs))
    return path


def settings_for(runtime, servers, info: PodInfo, directory: Path, *, initiate: tuple[str, ...] = (),
                 status_interval: float = 30, retransmit_tries: int = 2) -> MeshSettings:
    return MeshSettings(
        api_url=api_url(servers),
        token_file=write_token(directory, info),
        ca_bundle=ca_bundle(runtime),
        health_host="127.0.0.1",
        health_port=0,
        status_listen=("127.0.0.1", 0),
        status_interval=status_interval,
        watch_wait=1,  # the operator's server waits for open long polls when it stops
        pod_name=info.name,
        pod_namespace=info.namespace,
        pod_ips=info.ips,
        sidecar=SidecarSettings(dataplane="none", initiate=initiate,
                                ike=IkeSettings(port=IKE_PORT, natt_port=IKE_PORT + 1, retransmit_timeout=1.0,
                                                retransmit_tries=retransmit_tries)),
    )


@contextlib.asynccontextmanager
async def mesh_sidecar(settings: MeshSettings, dataplane=None) -> AsyncIterator[MeshSidecar]:
    async with MeshApiClient(settings.api_url, ca_bundle=settings.ca_bundle, token_file=settings.token_file) as client:
        sidecar = MeshSidecar(settings, client, dataplane or NullDataPlane())
        try:
            await asyncio.wait_for(sidecar.start(), 20)
            yield sidecar
        finally:
            await sidecar.stop()


async def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    """The loopback poll with the mesh tests' longer default (a sidecar's start and first map)."""
    await poll(predicate, timeout, what, interval=0.05)
