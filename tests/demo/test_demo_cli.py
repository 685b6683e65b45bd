"""The demo's command line and configuration, without namespaces (the VM test runs it for real)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ipsec_mesh.meshapi import Enforcement
from ipsec_mesh_operator import main as cli
from ipsec_mesh_operator.controller.index import MeshIndex
from ipsec_mesh_operator.demo import runner, vm
from ipsec_mesh_operator.demo.config import DemoService
from ipsec_mesh_operator.demo.runner import DEFAULT_CONFIG, load_config
from ipsec_mesh_operator.model.services import SliceInfo, parse_service
from ipsec_mesh_operator.standalone import StandaloneConfigError, parse_config


def test_embedded_default_is_a_standalone_mesh_with_a_peering_and_an_outsider():
    config = load_config(DEFAULT_CONFIG)
    assert [p.key for p in config.pods] == [("shop", "web"), ("shop", "db"), ("shady", "intruder")]
    assert config.node_address == "10.42.0.1"
    # The operator's part of the file is exactly what `ipsec-mesh standalone` reads.
    mesh = parse_config(config.operator_document)
    assert "network" not in config.operator_document and mesh == config.mesh
    index = MeshIndex(mesh.trust_domain)
    for spec in mesh.peerings:
        index.upsert_peering(spec)
    for name, labels in mesh.namespace_labels().items():
        index.set_namespace_labels(name, labels)
    for pod in mesh.pods:
        index.upsert_pod(pod)
    for kind, body in mesh.services:
        if kind == "Service":
            index.upsert_service(parse_service(body))
        else:
            index.upsert_endpoint_slice(SliceInfo.from_body(body))
    web_db = index.peering(("shop", "web-db"))
    assert web_db.enforcement is Enforcement.REQUIRE and web_db.lifetimes.child_seconds == 60
    assert any("mlkem768" in proposal for proposal in web_db.ike_proposals)
    assert index.members(("shop", "web-db")) == {("shop", "web"), ("shop", "db")}
    # The intruder's own peering names web: the intruder holds a policy for web.
    intruder_map = index.peer_map(("shady", "intruder"))
    assert [peer.name for policy in intruder_map.policies for peer in policy.peers] == ["shop/web"]
    web_map = index.peer_map(("shop", "web"))
    assert web_map.local.identity == "web.shop.pod.demo.mesh.local"
    assert "shop/db" in [peer.name for policy in web_map.policies for peer in policy.peers]
    # The db Service: in web's map (db is web's peer), not in the intruder's.
    [service] = web_map.services
    assert (service.key, [str(ip) for ip in service.cluster_ips], service.ports[0].port) == \
        ("shop/db", ["10.96.0.10"], 80)
    assert [(str(e.address), e.port, e.peer) for e in service.ports[0].endpoints] == [("10.42.0.11", 7000, True)]
    assert intruder_map.services == ()


@pytest.mark.parametrize("mutation, field", [
    (lambda d: d["pods"][0].update(ips=["10.9.9.9"]), "pods[0].ips"),
    (lambda d: d["pods"][1].update(ips=["10.42.0.1"]), "pods[1].ips"),
    (lambda d: d["pods"][0].update(ips=["10.42.0.20", "10.42.0.21"]), "pods[0].ips"),
    (lambda d: d["pods"][2].update(namespace="shop", name="db"), "pods[2]"),
    (lambda d: d.update(network="not-a-network"), "network"),
    (lambda d: d["pods"][0].update(netns="web"), "pods[0].netns"),  # the demo names them itself
    (lambda d: d["peerings"][0]["spec"].update(enforcement="maybe"), "peerings[0].spec"),
])
def test_bad_config_is_refused_with_the_field(tmp_path, monkeypatch, capsys, mutation, field):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    document = yaml.safe_load(DEFAULT_CONFIG.read_text())
    mutation(document)
    bad = tmp_path / "demo.yaml"
    bad.write_text(yaml.safe_dump(document))
    with pytest.raises(StandaloneConfigError) as error:
        load_config(bad)
    assert error.value.field == field
    assert cli.main(["demo", "--config", str(bad)]) == 2
    assert f"demo configuration: {field}" in capsys.readouterr().err


def test_the_service_web_calls_is_the_db_service_with_its_target_port():
    config = load_config(DEFAULT_CONFIG)
    service = config.service_in_front_of(config.pod("db"))
    assert service == DemoService("shop/db", "10.96.0.10", 80, 7000)
    # No Service has web or the intruder behind it.
    assert config.service_in_front_of(config.pod("web")) is None
    assert config.service_in_front_of(config.pod("intruder")) is None


def test_the_wire_is_read_by_whole_addresses():
    lines = [
        "12:00:00.1 IP 10.42.0.10 > 10.42.0.11: ESP(spi=0x0000abcd,seq=0x1), length 120",
        "12:00:00.2 IP 10.42.0.11 > 10.42.0.10: ESP(spi=0x0000dcba,seq=0x1), length 120",
        "12:00:00.3 IP 10.42.0.10.500 > 10.42.0.11.500: isakmp: parent_sa ikev2_init[I]",
        "12:00:00.4 IP 10.42.0.10.41000 > 10.96.0.10.80: Flags [S], seq 1, length 0",
        "12:00:00.5 IP 10.42.0.10.41001 > 10.96.0.100.80: Flags [S], seq 1, length 0",  # another address
        "12:00:00.6 IP 10.42.0.10.41002 > 10.42.0.11.7000: Flags [S], seq 1, length 0",
        "12:00:00.7 ARP, Request who-has 10.42.0.11 tell 10.42.0.10, length 28",
        "12:00:00.8 IP 10.42.0.100 > 10.42.0.11: ICMP echo request, id 1, seq 1, length 64",  # not web
    ]
    wire = runner.read_wire(lines, "10.42.0.10", "10.42.0.11", cluster_ip="10.96.0.10")
    assert (len(wire.esp), len(wire.ike)) == (2, 1)
    assert wire.plain == [lines[5]]
    assert wire.cluster_ip == [lines[3]]
    assert runner.read_wire(lines[:3], "10.42.0.10", "10.42.0.11").clean


def test_without_esp_the_demo_reruns_itself_in_the_vm(monkeypatch, capsys):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner, "kernel_has_esp", lambda: False)
    calls = []
    monkeypatch.setattr(vm, "run_in_vm", lambda argv: calls.append(argv) or 0)
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "has XFRM but no ESP" in out and "inside a VM" in out
    (argv,) = calls
    assert argv[1:5] == ["-m", "ipsec_mesh_operator.main", "demo", "--no-vm"]
    assert Path(argv[-1]) == DEFAULT_CONFIG.resolve()


def test_no_vm_flag_refuses_instead(monkeypatch, capsys):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner, "kernel_has_esp", lambda: False)
    assert cli.main(["demo", "--no-vm"]) == 2
    assert "no ESP" in capsys.readouterr().err


def test_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 1000)
    assert cli.main(["demo"]) == 2
    assert "as root" in capsys.readouterr().err


def test_a_kernel_with_esp_is_found_when_installed():
    if not list(Path("/boot").glob("vmlinuz-*")):
        pytest.skip("no kernel in /boot")
    assert vm.kernel_with_esp().name.startswith("vmlinuz-")


def test_cli_help_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "demo" in (out := capsys.readouterr().out) and "standalone" in out
    assert cli.main(["frobnicate"]) == 2
