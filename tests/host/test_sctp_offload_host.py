"""SCTP's checksum offload for translated Services on this host's kernel (issue 11).

While the map lists an SCTP service port, the sidecar turns `tx-checksum-sctp` off on the veth its
ClusterIPs leave by (SIOCETHTOOL), reads it back into its status, leaves every other feature as it
was, leaves the device alone for TCP/UDP-only maps, and turns the feature back on when the last
SCTP port goes. `ethtool -k` is the independent reader.
"""

from __future__ import annotations

import errno
import subprocess

import pytest

from ipsec_mesh.svcnat import ServiceTranslation
from ipsec_mesh.svcnat.offload import SCTP_CRC, DeviceFeatures, EthtoolError
from tests.host.test_services_host import cluster, peer_set, service_doc  # noqa: F401 (cluster is a fixture)


def features(netns: str, dev: str) -> dict[str, str]:
    """`ethtool -k` of the device: feature -> its state text."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-k", dev], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return {name.strip(): value.strip() for name, sep, value in (line.partition(":") for line in out.splitlines()[1:])
            if sep}


def with_sctp(doc: dict) -> dict:
    tcp = doc["ports"][0]
    return dict(doc, ports=[*doc["ports"], dict(tcp, name="sctp", protocol="SCTP")])


def client_dev(translation: ServiceTranslation) -> str:
    return next(route["dev"] for route in translation.status()["routes"])


def test_sctp_offload_is_off_only_while_an_sctp_port_is_listed_and_nothing_else_changes(cluster):
    translation = ServiceTranslation(netns=cluster.client)
    try:
        tcp_udp = service_doc(["10.98.2.2"], peer=True)
        assert translation.apply(tuple(peer_set([tcp_udp]).peer_map.services))
        dev = client_dev(translation)
        before = features(cluster.client, dev)
        assert before[SCTP_CRC] == "on"  # a veth offers it: what makes a translated SCTP call fail
        assert translation.status()["sctp_checksum"] == {"devices": [], "error": ""}

        sctp = tuple(peer_set([with_sctp(tcp_udp)]).peer_map.services)
        assert translation.apply(sctp) and translation.problem() is None
        after = features(cluster.client, dev)
        assert after[SCTP_CRC] == "off"
        assert {k: v for k, v in after.items() if k != SCTP_CRC} == {k: v for k, v in before.items() if k != SCTP_CRC}
        assert translation.status()["sctp_checksum"] == {"devices": [
            {"dev": dev, SCTP_CRC: "off", "wanted_off": True, "turned_off_by_sidecar": True}], "error": ""}

        # Turned on again by someone else: the next update turns it off again (the map is the truth).
        subprocess.run(["ip", "netns", "exec", cluster.client, "ethtool", "-K", dev, SCTP_CRC, "on"], check=True,
                       timeout=30)
        assert translation.status()["sctp_checksum"]["devices"][0][SCTP_CRC] == "on"  # read from the kernel
        assert translation.apply(sctp) and features(cluster.client, dev)[SCTP_CRC] == "off"

        # A restarted sidecar with the same map keeps it off with no moment on.
        restarted = ServiceTranslation(netns=cluster.client)
        try:
            assert restarted.apply(sctp) and features(cluster.client, dev)[SCTP_CRC] == "off"
        finally:
            restarted.close()

        assert translation.apply(tuple(peer_set([tcp_udp]).peer_map.services))  # the SCTP port is gone
        assert features(cluster.client, dev) == before
        assert translation.status()["sctp_checksum"] == {"devices": [], "error": ""}
    finally:
        translation.close()


def test_the_ioctl_names_missing_devices_and_fixed_features(cluster):
    device_features = DeviceFeatures(cluster.client)
    try:
        with pytest.raises(EthtoolError) as missing:
            device_features.state("nosuchdev0", SCTP_CRC)
        assert missing.value.code == errno.ENODEV
        assert device_features.state("lo", SCTP_CRC).fixed
        with pytest.raises(EthtoolError, match="no feature"):
            device_features.state("lo", "tx-no-such-feature")
    finally:
        device_features.close()


def recorded(netns: str) -> str:
    """The record of devices the mesh turned tx-checksum-sctp off on, as `nft` lists it ("" if there is none)."""
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "set", "inet", "ipsec_mesh_svc",
                           "sctp_crc_off"], capture_output=True, text=True, timeout=30)
    return done.stdout if done.returncode == 0 else ""


@pytest.mark.parametrize("restart_with", ["sctp", "no sctp"])
def test_a_restarted_sidecar_turns_back_on_what_an_earlier_one_turned_off(cluster, restart_with):
    """The fact "we turned it off, it was on" lives in the pod's namespace (an element of a set in the mesh's
    table), so the next instance over the same namespace restores the feature when the last SCTP port goes,
    whether that happens in its first update or a later one."""
    tcp_udp = service_doc(["10.98.2.2"], peer=True)
    plain = tuple(peer_set([tcp_udp]).peer_map.services)
    sctp = tuple(peer_set([with_sctp(tcp_udp)]).peer_map.services)
    first = ServiceTranslation(netns=cluster.client)
    try:
        assert first.apply(plain)
        dev = client_dev(first)
        before = features(cluster.client, dev)
        assert first.apply(sctp) and features(cluster.client, dev)[SCTP_CRC] == "off"
        assert f'"{dev}"' in recorded(cluster.client)
    finally:
        first.close()  # the process ends: the namespace, the table and the device's features stay

    second = ServiceTranslation(netns=cluster.client)
    try:
        if restart_with == "sctp":
            assert second.apply(sctp) and features(cluster.client, dev)[SCTP_CRC] == "off"
            assert second.status()["sctp_checksum"]["devices"] == [
                {"dev": dev, SCTP_CRC: "off", "wanted_off": True, "turned_off_by_sidecar": True}]
            assert f'"{dev}"' in recorded(cluster.client)  # the restart's first batch kept the record
        assert second.apply(plain) and second.problem() is None
        assert features(cluster.client, dev) == before  # back on, nothing else changed
        assert f'"{dev}"' not in recorded(cluster.client)
        assert second.status()["sctp_checksum"] == {"devices": [], "error": ""}
    finally:
        second.close()


def test_a_feature_that_was_off_before_the_mesh_stays_off_after_a_restart(cluster):
    tcp_udp = service_doc(["10.98.2.2"], peer=True)
    plain = tuple(peer_set([tcp_udp]).peer_map.services)
    first = ServiceTranslation(netns=cluster.client)
    try:
        assert first.apply(plain)
        dev = client_dev(first)
        subprocess.run(["ip", "netns", "exec", cluster.client, "ethtool", "-K", dev, SCTP_CRC, "off"], check=True,
                       timeout=30)  # someone else's choice, before any SCTP Service
        assert first.apply(tuple(peer_set([with_sctp(tcp_udp)]).peer_map.services))
        assert f'"{dev}"' not in recorded(cluster.client)
    finally:
        first.close()
    second = ServiceTranslation(netns=cluster.client)
    try:
        assert second.apply(plain) and features(cluster.client, dev)[SCTP_CRC] == "off"
    finally:
        second.close()
