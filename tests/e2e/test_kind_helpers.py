"""The kind suite's helpers, checked here (the suite itself needs Docker and kind)."""

import base64
import ipaddress
import json
import socket
import struct
import subprocess

import pytest
import yaml

from ipsec_mesh_operator.controller.federation import BUNDLE_PATH
from ipsec_mesh_operator.model import crd
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.services import parse_service
from tests.e2e import kind_helpers as kh


def test_kind_config_sets_both_subnets():
    config = yaml.safe_load(kh.kind_config("10.245.0.0/16", "10.97.0.0/16"))
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    assert config["networking"] == {"podSubnet": "10.245.0.0/16", "serviceSubnet": "10.97.0.0/16"}


def test_node_ip_reads_the_kind_network_of_docker_inspect():
    inspect = json.dumps([{"NetworkSettings": {"Networks": {
        "bridge": {"IPAddress": "172.17.0.2"}, "kind": {"IPAddress": "172.18.0.3", "GlobalIPv6Address": "fc00::3"}}}}])
    assert kh.node_ip(inspect) == "172.18.0.3"
    for bad in ("[]", "not json", json.dumps([{"NetworkSettings": {"Networks": {"kind": {"IPAddress": ""}}}}])):
        with pytest.raises(kh.OutputError):
            kh.node_ip(bad)


def test_route_commands_exempt_remote_pods_from_masquerading():
    commands = kh.cross_cluster_route_commands("10.244.0.0/16", "10.245.0.0/16", "172.18.0.3")
    assert commands[0] == ["ip", "route", "replace", "10.245.0.0/16", "via", "172.18.0.3"]
    nat = commands[1]
    assert nat[:6] == ["iptables", "-t", "nat", "-I", "POSTROUTING", "1"]  # before kindnet's masquerade jump
    assert nat[nat.index("-s") + 1] == "10.244.0.0/16" and nat[nat.index("-d") + 1] == "10.245.0.0/16"
    assert nat[-2:] == ["-j", "RETURN"]


def test_pod_ip_prefers_ipv4_and_fails_clearly_without_one():
    dual = {"status": {"podIP": "fd00::5", "podIPs": [{"ip": "fd00::5"}, {"ip": "10.244.0.7"}]}}
    assert kh.pod_ip(json.dumps(dual)) == "10.244.0.7"
    assert kh.pod_ip(json.dumps({"status": {"podIP": "10.244.0.9"}})) == "10.244.0.9"
    for bad in ({"status": {}}, {"status": {"podIPs": [{"ip": "fd00::5"}]}}):
        with pytest.raises(kh.OutputError):
            kh.pod_ip(json.dumps(bad))


def test_cluster_ip_reads_the_ipv4_cluster_ip_and_fails_clearly_without_one():
    dual = {"spec": {"clusterIP": "fd00:96::a", "clusterIPs": ["fd00:96::a", "10.96.12.7"]}}
    assert kh.cluster_ip(json.dumps(dual)) == "10.96.12.7"
    assert kh.cluster_ip(json.dumps({"spec": {"clusterIP": "10.96.0.20"}})) == "10.96.0.20"
    for bad in ({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}, {"spec": {}},
                {"spec": {"clusterIPs": ["fd00:96::a"]}}, {"metadata": {}}):
        with pytest.raises(kh.OutputError):
            kh.cluster_ip(json.dumps(bad))


def test_wire_filters_name_both_pods_and_the_cluster_ip_and_compile():
    esp, plain = kh.wire_filters("10.244.0.5", "10.244.0.6", "10.96.12.7")
    assert esp == "esp and host 10.244.0.5 and host 10.244.0.6"
    assert plain == "tcp and host 10.244.0.5 and (host 10.244.0.6 or host 10.96.12.7)"
    assert kh.wire_filters("10.244.0.5", "10.244.0.6")[1] == "tcp and host 10.244.0.5 and host 10.244.0.6"
    # tcpdump (scripts/setup.sh installs it) compiles them, as the node's tcpdump will.
    for bpf in (esp, plain, "tcp and hots 10.244.0.5"):
        compiled = subprocess.run(["tcpdump", "-d", "-y", "EN10MB", bpf], capture_output=True, text=True, timeout=30)
        assert (compiled.returncode == 0) == ("hots" not in bpf), compiled.stderr


def test_condition_and_secret_value_and_injected_sidecar():
    peering = {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "AwaitingConsent", "message": "one-sided in namespace(s) shop"},
        {"type": "Degraded", "status": "True", "reason": "AwaitingConsent", "message": "m"}]}}
    assert kh.condition(json.dumps(peering), "Ready") == ("False", "AwaitingConsent", "one-sided in namespace(s) shop")
    assert kh.condition(json.dumps({"status": {}}), "Ready") is None
    secret = {"data": {"trust-bundle.pem": base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode()}}
    assert kh.secret_value(json.dumps(secret), "trust-bundle.pem") == b"-----BEGIN CERTIFICATE-----"
    with pytest.raises(kh.OutputError):
        kh.secret_value(json.dumps(secret), "ca.key")
    pod = {"spec": {"initContainers": [{"name": "ipsec-mesh"}], "containers": [{"name": "app"}]}}
    assert kh.first_init_container(json.dumps(pod))["name"] == "ipsec-mesh"
    with pytest.raises(kh.OutputError):
        kh.first_init_container(json.dumps({"spec": {"containers": []}}))


def test_packets_captured_reads_the_tcpdump_summary_or_counts_lines():
    stderr = ("tcpdump: data link type LINUX_SLL2\nlistening on any, link-type LINUX_SLL2\n"
              "12 packets captured\n14 packets received by filter\n0 packets dropped by kernel\n")
    assert kh.packets_captured("", stderr) == 12
    assert kh.packets_captured("", "1 packet captured\n") == 1
    lines = "14:00:00.1 eth0 Out IP 10.244.0.5 > 10.244.0.6: ESP(spi=0x1,seq=0x1), length 88\n" * 3
    assert kh.packets_captured(lines, "tcpdump: listening on any\n") == 3
    assert kh.packets_captured("", "") == 0


def test_xfrm_stat_parses_counters():
    text = "XfrmInError             \t0\nXfrmInTmplMismatch      \t20\nXfrmOutNoStates         \t3\n"
    assert kh.xfrm_stat(text) == {"XfrmInError": 0, "XfrmInTmplMismatch": 20, "XfrmOutNoStates": 3}
    assert kh.xfrm_stat("cat: can't open '/proc/net/xfrm_stat'") == {}


def test_manifests_are_valid_peerings_and_pods():
    peerings = [
        kh.pod_peering("grab", "outside", "intruder", "db", peer_namespace="shop"),
        kh.remote_peering("web-to-west", "shop", "web", "west", ["10.245.0.0/16"], ["*.shop.pod.west.example"],
                          kh.bundle_url("172.18.0.3", 31444), "west.example", "west-bootstrap"),
    ]
    for obj in peerings:
        assert crd.validate(obj) == []
        meta = obj["metadata"]
        parse_peering(meta["namespace"], meta["name"], crd.apply_defaults(obj)["spec"])
    west = parse_peering("shop", "web-to-west", peerings[1]["spec"]).remotes[0]
    assert west.trust == "federation" and west.federation.trust_domain == "west.example"
    assert west.federation.endpoint == "https://172.18.0.3:31444/spiffe/v1/bundle"
    assert west.federation.bootstrap_ref == ("ConfigMap", "west-bootstrap", "ca.crt")
    grab = parse_peering("outside", "grab", peerings[0]["spec"])
    assert grab.pod_peers[0].namespaces.matches({"kubernetes.io/metadata.name": "shop"})
    assert not grab.pod_peers[0].namespaces.matches({"kubernetes.io/metadata.name": "outside"})
    # The Service, as the operator parses it; its port is named, so its EndpointSlices' ports match it.
    manifest = kh.service("db", "shop", "db", 80, 8080)
    assert "clusterIP" not in manifest["spec"]  # the API server allocates it; parse it as it comes back
    entry = parse_service({**manifest, "spec": {**manifest["spec"], "clusterIP": "10.96.12.7"}})
    assert (entry.key, [(p.name, p.protocol.value, p.port) for p in entry.ports]) == ("shop/db", [("http", "TCP", 80)])
    server = kh.http_server_pod("db", "shop", "db")
    assert server["spec"]["containers"][0]["name"] == "db"  # `kubectl exec POD -c POD` relies on it
    assert [doc["kind"] for doc in yaml.safe_load_all(kh.to_yaml(server, peerings[0]))] == ["Pod", "IPsecPeering"]


def _ones_complement_ok(data: bytes) -> bool:
    return kh._checksum(data) == 0


def test_spoofed_udp_carries_the_claimed_source_and_valid_checksums():
    packet = kh.spoofed_udp("10.244.0.5", "10.244.0.6", payload=b"abc")
    header, udp = packet[:20], packet[20:]
    version_ihl, _, total, _, _, ttl, proto, _, src, dst = struct.unpack("!BBHHHBBH4s4s", header)
    assert (version_ihl, total, proto) == (0x45, len(packet), socket.IPPROTO_UDP)
    assert ipaddress.IPv4Address(src) == ipaddress.IPv4Address("10.244.0.5")
    assert ipaddress.IPv4Address(dst) == ipaddress.IPv4Address("10.244.0.6")
    assert _ones_complement_ok(header)
    sport, dport, length, _ = struct.unpack("!HHHH", udp[:8])
    assert (dport, length, udp[8:]) == (kh.SPOOF_PORT, 11, b"abc")
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    assert _ones_complement_ok(pseudo + udp)


def test_node_port_of_the_bundle_service():
    service = {"spec": {"type": "NodePort", "ports": [{"name": "bundle", "port": 8444, "nodePort": 31444}]}}
    assert kh.node_port(json.dumps(service), "bundle") == 31444
    for broken in ({"spec": {"type": "ClusterIP", "ports": [{"name": "bundle", "port": 8444}]}},
                   {"spec": {"ports": [{"name": "api", "port": 443, "nodePort": 30443}]}}, {}):
        with pytest.raises(kh.OutputError):
            kh.node_port(json.dumps(broken), "bundle")
    with pytest.raises(kh.OutputError):
        kh.node_port("not json", "bundle")
    assert kh.bundle_url("fd00::3", 31444) == "https://[fd00::3]:31444/spiffe/v1/bundle"
    assert kh.BUNDLE_PATH == BUNDLE_PATH  # the path the operator serves
