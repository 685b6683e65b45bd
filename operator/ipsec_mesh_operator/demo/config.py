"""The demo's YAML: the standalone operator's format plus `network`, the pod network to build."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ipsec_mesh.meshapi import PeerMapError, ServiceProtocol, fields

from ..controller.index import PodInfo
from ..model.services import SliceInfo, parse_service
from ..standalone.config import MAX_FILE_BYTES, StandaloneConfig, StandaloneConfigError, parse_config

MAX_DEMO_PODS = 16


class DemoError(RuntimeError):
    pass


@dataclass(frozen=True)
class DemoService:
    """A TCP port of a Service in front of a pod: what the demo calls instead of the pod's own address."""

    key: str
    cluster_ip: str
    port: int
    #: The pod's port behind it (the EndpointSlice's, so a named targetPort comes out resolved).
    target_port: int


@dataclass(frozen=True)
class DemoConfig:
    network: ipaddress.IPv4Network
    mesh: StandaloneConfig
    #: The document without `network`: what the standalone operator reads.
    operator_document: dict[str, Any]

    @property
    def node_address(self) -> str:
        """The bridge's address in the node namespace, where the operator listens."""
        return str(next(self.network.hosts()))

    @property
    def pods(self) -> tuple[PodInfo, ...]:
        return self.mesh.pods

    def pod(self, name: str) -> PodInfo:
        for pod in self.mesh.pods:
            if pod.name == name:
                return pod
        raise DemoError(f"no pod named {name}")

    def has_pod(self, name: str) -> bool:
        return any(pod.name == name for pod in self.mesh.pods)

    def service_in_front_of(self, pod: PodInfo) -> DemoService | None:
        """The first IPv4 TCP Service port of the YAML with `pod` behind it, or None."""
        entries = {}
        for kind, body in self.mesh.services:
            if kind == "Service" and (entry := parse_service(body)) is not None:
                entries[(entry.namespace, entry.name)] = entry
        for kind, body in self.mesh.services:
            piece = SliceInfo.from_body(body) if kind == "EndpointSlice" else None
            entry = entries.get(piece.service_key) if piece is not None else None
            if entry is None or pod.ips[0] not in {endpoint.text for endpoint in piece.endpoints}:
                continue
            cluster_ip = next((str(ip) for ip in entry.cluster_ips if ip.version == 4), None)
            for port in entry.ports:
                target = next((p.port for p in piece.ports if (p.name, p.protocol) == (port.name, port.protocol)), None)
                if cluster_ip and target and port.protocol is ServiceProtocol.TCP:
                    return DemoService(entry.key, cluster_ip, port.port, target)
        return None


def load_config(path: Path) -> DemoConfig:
    raw = path.read_bytes()[:MAX_FILE_BYTES + 1]
    if len(raw) > MAX_FILE_BYTES:
        raise StandaloneConfigError("", f"{path} is too large")
    document = yaml.safe_load(raw)
    if not isinstance(document, dict):
        raise StandaloneConfigError("", "the demo YAML must be a mapping")
    document = dict(document)
    try:
        network = ipaddress.IPv4Network(fields.string(document.pop("network", None), "network", 18))
    except PeerMapError as exc:
        raise StandaloneConfigError.wrap(exc) from None
    except ValueError as exc:
        raise StandaloneConfigError("network", f"not an IPv4 network: {exc}") from None
    mesh = parse_config(document)
    if mesh.pod_netns:
        index = next(i for i, pod in enumerate(mesh.pods) if pod.key in mesh.pod_netns)
        raise StandaloneConfigError(f"pods[{index}].netns", "the demo creates and names the pods' namespaces itself")
    if not 2 <= len(mesh.pods) <= MAX_DEMO_PODS:
        raise StandaloneConfigError("pods", f"the demo runs 2..{MAX_DEMO_PODS} pods")
    names = [pod.name for pod in mesh.pods]
    config = DemoConfig(network, mesh, document)
    for index, pod in enumerate(mesh.pods):
        if names.count(pod.name) > 1:
            raise StandaloneConfigError(f"pods[{index}].name", "the demo needs pod names unique across namespaces")
        address = ipaddress.ip_address(pod.ips[0])
        if len(pod.ips) != 1 or address not in network or str(address) == config.node_address \
                or address in (network.network_address, network.broadcast_address):
            raise StandaloneConfigError(
                f"pods[{index}].ips", f"give one address of {network} other than {config.node_address} (the node's)")
    return config
