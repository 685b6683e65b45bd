"""The demo's first half on the host kernel (no ESP needed): the standalone operator in the node
namespace serves the mesh API on the bridge address, and a pod reaches it with its token."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket

import pytest
from cryptography import x509

from ipsec_mesh.meshapi import MeshApiClient, MeshApiRequestError
from ipsec_mesh_operator.demo.runner import DEFAULT_CONFIG, Demo, load_config, read_wire
from ipsec_mesh_operator.netns import in_netns
from tests.support.standalone_fixture import make_csr

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to create network namespaces")


def _bootstrap(url: str, bundle: str, token_file: str, identity: str):
    async def run():
        async with MeshApiClient(url, ca_bundle=bundle, token_file=token_file) as client:
            issued = await client.sign_csr(make_csr(identity))
            return issued, await client.fetch_peer_map()
    return asyncio.run(run())


def test_pods_bootstrap_from_the_standalone_operator_over_the_bridge():
    config = load_config(DEFAULT_CONFIG)
    out = io.StringIO()
    demo = Demo(config, out=out)
    try:
        demo.build_network()
        overview = demo.start_operator()
        operator = demo.operator
        assert operator.url == "https://10.42.0.1:8443"
        assert {p["name"] for p in overview["peerings"]} == {"web-db", "intruder-wants-in"}
        web = config.pod("web")
        issued, peer_map = in_netns(demo.netns("web"), _bootstrap, operator.url, operator.ca_bundle,
                                    str(operator.token_file(web)), "web.shop.pod.demo.mesh.local")
        cert = x509.load_pem_x509_certificate(issued.certificate.encode())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["web.shop.pod.demo.mesh.local"]
        assert "shop/db" in [peer.name for policy in peer_map.policies for peer in policy.peers]
        # The intruder's token cannot buy web's certificate, even from inside the mesh.
        with pytest.raises(MeshApiRequestError):
            in_netns(demo.netns("intruder"), _bootstrap, operator.url, operator.ca_bundle,
                     str(operator.token_file(config.pod("intruder"))), "web.shop.pod.demo.mesh.local")
        records = {p["name"]: p["certificate"] for p in operator.overview()["pods"]}
        assert records["web"]["serial"] == f"{cert.serial_number:x}" and records["intruder"] is None
        # The operator passes on each pod's namespace, where explain reads the sidecar's local /status.
        assert {p["name"]: p["netns"] for p in overview["pods"]} == {p.name: demo.netns(p.name) for p in config.pods}
    finally:
        demo.cleanup()
    assert "nothing left behind" in out.getvalue()
    assert demo.operator.process.poll() is not None


@contextlib.contextmanager
def pods_with_sidecars(config, out: io.StringIO):
    """The demo's steps 1 to 3 (pods, the standalone operator, a ready sidecar in each pod); cleaned up after."""
    demo = Demo(config, out=out)
    try:
        demo.build_network()
        demo.start_operator()
        demo.start_sidecars()
        yield demo
    finally:
        demo.cleanup()


def test_explain_on_the_node_reads_each_sidecars_status_inside_its_pod():
    """Step 8 of the demo on the host kernel: mesh-mode sidecars serve /status only on 127.0.0.1:9741
    in their pod; explain, run in the node namespace, reads it there (no ESP here, so no SA yet)."""
    config = load_config(DEFAULT_CONFIG)
    out = io.StringIO()
    with pods_with_sidecars(config, out) as demo:
        demo.explain(config.pod("web"), config.pod("db"), expect_encrypted=True)
        demo.explain(config.pod("intruder"), config.pod("web"), expect_encrypted=False)
    text = out.getvalue()
    assert "could not be read" not in text and "sidecar-not-ready" not in text, text
    assert "shop/web <-> shop/db: NOT ENCRYPTED" in text
    assert "shady/intruder <-> shop/web: NOT ENCRYPTED (one-sided)" in text, text
    assert "nothing left behind" in text


def _connect(address: str, port: int) -> None:
    """A TCP connection attempt that cannot complete here: the SYN is held for an SA this kernel cannot
    install, or goes to the node, which answers nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((address, port))
        except OSError:
            pass


def test_the_service_step_on_the_host_kernel_nothing_leaves_web_for_the_cluster_ip():
    """The Service step's wire claim without ESP: web's sidecar translates the db Service (TCP 80)
    inside web, so a call to its ClusterIP leaves web addressed to db's pod IP (where the require
    policy holds it for an SA this kernel cannot install), never to the ClusterIP; a call to a port
    the Service does not have, made the same way, does cross the wire (the pod's default route leads
    to the node, as in a cluster, and kube-proxy's business is left to it)."""
    config = load_config(DEFAULT_CONFIG)
    web, db = config.pod("web"), config.pod("db")
    service = config.service_in_front_of(db)
    out = io.StringIO()
    with pods_with_sidecars(config, out) as demo:
        assert demo.service_translation("web", service.key) == {"translated": True, "current": True, "error": ""}
        assert demo.service_translation("intruder", service.key) is None
        pcap = demo.start_capture("web", "service.pcap")
        in_netns(demo.netns("web"), _connect, service.cluster_ip, service.port)
        in_netns(demo.netns("web"), _connect, service.cluster_ip, 81)
        lines = demo.stop_capture(pcap)
    wire = read_wire(lines, web.ips[0], db.ips[0], cluster_ip=service.cluster_ip)
    assert wire.plain == [], lines
    assert wire.cluster_ip and all(f"{service.cluster_ip}.81:" in line for line in wire.cluster_ip), lines
    assert "nothing left behind" in out.getvalue()
