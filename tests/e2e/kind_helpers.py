"""Pure helpers of the kind end-to-end suite: manifests to apply and parsers of tool output.

Kept apart from test_kind_operator.py so that they are unit-tested everywhere
(tests/e2e/test_kind_helpers.py), while the suite itself needs Docker and kind.
Run as a script inside a container that shares a kind node's network namespace,
it sends spoofed plaintext (`python3 kind_helpers.py spoof SRC DST COUNT`).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import socket
import struct
import sys
from collections.abc import Mapping
from typing import Any

import yaml

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: A port no workload listens on: spoofed datagrams must die in XFRM, not in a socket.
SPOOF_PORT = 9999
#: federation.BUNDLE_PATH, spelt here: this file also runs where the operator package is not installed.
BUNDLE_PATH = "/spiffe/v1/bundle"


class OutputError(Exception):
    """A tool's output is not what the suite expects."""


# ---- kind --------------------------------------------------------------------


def kind_config(pod_subnet: str, service_subnet: str) -> str:
    """A one-node kind cluster with the given pod and Service CIDRs (distinct per cluster)."""
    return yaml.safe_dump({
        "kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"podSubnet": pod_subnet, "serviceSubnet": service_subnet},
    }, sort_keys=False)


def node_ip(docker_inspect: str, network: str = "kind") -> str:
    """The IPv4 address of a kind node container on the `kind` Docker network (`docker inspect NODE`)."""
    try:
        [container] = json.loads(docker_inspect)
        address = container["NetworkSettings"]["Networks"][network]["IPAddress"]
        return str(ipaddress.IPv4Address(address))
    except (ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"no IPv4 address on Docker network {network!r} in docker inspect output") from exc


def cross_cluster_route_commands(local_pods: str, remote_pods: str, remote_node: str) -> list[list[str]]:
    """Commands for a kind node: route the remote cluster's pod CIDR to its node, without masquerading.

    kindnet masquerades traffic leaving the pod CIDR; transport-mode ESP and the peer
    maps name pods by address, so pod-to-remote-pod traffic must keep its source.
    """
    return [
        ["ip", "route", "replace", remote_pods, "via", remote_node],
        ["iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-s", local_pods, "-d", remote_pods, "-j", "RETURN"],
    ]


# ---- kubectl output ------------------------------------------------------------


def pod_ip(pod_json: str) -> str:
    """The pod's IPv4 address from `kubectl get pod -o json`."""
    try:
        status = json.loads(pod_json)["status"]
        ips = [entry["ip"] for entry in status.get("podIPs") or []] or [status["podIP"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise OutputError("the pod has no IP yet") from exc
    for ip in ips:
        if ipaddress.ip_address(ip).version == 4:
            return ip
    raise OutputError(f"no IPv4 address among {ips}")


def cluster_ip(service_json: str) -> str:
    """The IPv4 ClusterIP of a Service from `kubectl get service -o json` (not headless, allocated)."""
    try:
        spec = json.loads(service_json)["spec"]
        ips = spec.get("clusterIPs") or [spec["clusterIP"]]
        return next(ip for ip in ips if ipaddress.ip_address(ip).version == 4)
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise OutputError("the Service has no IPv4 ClusterIP") from exc


def condition(peering_json: str, kind: str) -> tuple[str, str, str] | None:
    """(status, reason, message) of one condition of an IPsecPeering, or None if absent."""
    conditions = json.loads(peering_json).get("status", {}).get("conditions") or []
    for entry in conditions:
        if entry.get("type") == kind:
            return entry.get("status", ""), entry.get("reason", ""), entry.get("message", "")
    return None


def node_port(service_json: str, port_name: str) -> int:
    """The nodePort the API server allocated to the named port of a Service (`kubectl get service -o json`)."""
    try:
        ports = json.loads(service_json)["spec"]["ports"]
        port = next(p for p in ports if p.get("name") == port_name)["nodePort"]
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise OutputError(f"the Service has no nodePort named {port_name}") from exc
    if not isinstance(port, int):
        raise OutputError(f"nodePort {port!r} is not a number")
    return port


def bundle_url(host: str, port: int) -> str:
    """Where another cluster's operator fetches this one's SPIFFE bundle (its endpoint's node port)."""
    shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    return f"https://{shown}:{port}{BUNDLE_PATH}"


def secret_value(secret_json: str, key: str) -> bytes:
    """One key of a Secret (`kubectl get secret -o json`), decoded."""
    try:
        return base64.b64decode(json.loads(secret_json)["data"][key], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"the Secret has no valid key {key!r}") from exc


def first_init_container(pod_json: str) -> Mapping[str, Any]:
    containers = json.loads(pod_json)["spec"].get("initContainers") or []
    if not containers:
        raise OutputError("the pod has no init containers: it was not injected")
    return containers[0]


# ---- tcpdump and the kernel ------------------------------------------------------


_CAPTURED = re.compile(r"^(\d+) packets? captured$", re.M)


def packets_captured(stdout: str, stderr: str) -> int:
    """How many packets a tcpdump run matched: its closing summary, else the lines it printed."""
    found = _CAPTURED.search(stderr)
    if found:
        return int(found.group(1))
    return sum(1 for line in stdout.splitlines() if line.strip())


def wire_filters(client: str, server: str, cluster_ip: str | None = None) -> tuple[str, str]:
    """tcpdump filters for a call from `client` to `server` (directly, or through a Service at
    `cluster_ip`): ESP between the two pods, and plaintext TCP between them or to the ClusterIP,
    which a pod that translates the Service itself never puts on the wire."""
    plain = f"host {server}" if cluster_ip is None else f"(host {server} or host {cluster_ip})"
    return f"esp and host {client} and host {server}", f"tcp and host {client} and {plain}"


def xfrm_stat(text: str) -> dict[str, int]:
    """/proc/net/xfrm_stat of a network namespace: counter name -> value."""
    counters = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


# ---- manifests ---------------------------------------------------------------------


def busybox_pod(name: str, namespace: str, app: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"containers": [{"name": name, "image": "busybox:1.36", "command": command}],
                 "terminationGracePeriodSeconds": 1},
    }


def http_server_pod(name: str, namespace: str, app: str) -> dict[str, Any]:
    """busybox httpd serving /etc on 8080: GET /hostname answers the pod's name."""
    return busybox_pod(name, namespace, app, ["httpd", "-f", "-p", "8080", "-h", "/etc"])


def client_pod(name: str, namespace: str, app: str) -> dict[str, Any]:
    return busybox_pod(name, namespace, app, ["sleep", "86400"])


def service(name: str, namespace: str, app: str, port: int, target_port: int) -> dict[str, Any]:
    """A ClusterIP Service in front of the pods labelled `app`, TCP `port` to their `target_port`."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "ClusterIP", "selector": {"app": app},
                 "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target_port}]},
    }


def pod_peering(name: str, namespace: str, app: str, peer_app: str, peer_namespace: str | None = None,
                enforcement: str = "require") -> dict[str, Any]:
    peer: dict[str, Any] = {"podSelector": {"matchLabels": {"app": peer_app}}}
    if peer_namespace is not None:
        peer["namespaceSelector"] = {"matchLabels": {NAMESPACE_NAME_LABEL: peer_namespace}}
    return _peering(name, namespace, app, [peer], enforcement)


def remote_peering(name: str, namespace: str, app: str, remote: str, cidrs: list[str], identities: list[str],
                   endpoint: str, trust_domain: str, bootstrap_configmap: str) -> dict[str, Any]:
    """Members `app` peer with another cluster's pods in `cidrs`, certified by its mesh CA: the bundle fetched
    from the other operator's endpoint, the first fetch authenticated by a bootstrap copy (a ConfigMap here)."""
    return _peering(name, namespace, app, [{"remote": {
        "name": remote, "cidrs": cidrs, "identities": identities,
        "federation": {"endpoint": endpoint, "trustDomain": trust_domain, "refreshInterval": "30s",
                       "bootstrapBundle": {"kind": "ConfigMap", "name": bootstrap_configmap, "key": "ca.crt"}},
    }}], "require")


def _peering(name: str, namespace: str, app: str, peers: list[dict[str, Any]], enforcement: str) -> dict[str, Any]:
    return {
        "apiVersion": "ipsec-mesh.io/v1alpha1", "kind": "IPsecPeering",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": app}}, "peers": peers, "enforcement": enforcement},
    }


def to_yaml(*objects: Mapping[str, Any]) -> str:
    return yaml.safe_dump_all(list(objects), sort_keys=False)


# ---- spoofed plaintext ---------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def spoofed_udp(source: str, destination: str, port: int = SPOOF_PORT, payload: bytes = b"plaintext") -> bytes:
    """An IPv4/UDP datagram from `source` (someone else's address) to `destination`, checksums set."""
    src, dst = ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address(destination).packed
    length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    udp = struct.pack("!HHHH", 40000, port, length, 0) + payload
    udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0x1234, 0, 64, socket.IPPROTO_UDP, 0, src, dst)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def send_spoofed(source: str, destination: str, count: int) -> None:
    """Send `count` spoofed datagrams (needs CAP_NET_RAW in the sending network namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for _ in range(count):
            raw.sendto(spoofed_udp(source, destination), (destination, 0))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "spoof":
        sys.exit("usage: kind_helpers.py spoof SOURCE DESTINATION COUNT")
    send_spoofed(sys.argv[2], sys.argv[3], min(int(sys.argv[4]), 1000))
