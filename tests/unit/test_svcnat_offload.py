"""SCTP's checksum offload for translated Services (issue 11): the ethtool ioctl's encoding and parsing,
and when the translation turns `tx-checksum-sctp` off or back on (kernel side faked; the host test
tests/host/test_sctp_offload_host.py and the VM test test_services_mtu_vm.py use the real one)."""

from __future__ import annotations

import errno
import ipaddress
import struct

import pytest

from ipsec_mesh.meshapi import ServiceProtocol
from ipsec_mesh.svcnat import ServiceTranslation
from ipsec_mesh.svcnat.nft import NftError
from ipsec_mesh.svcnat.offload import (
    ETH_GSTRING_LEN,
    ETH_SS_FEATURES,
    ETHTOOL_GFEATURES,
    ETHTOOL_GSSET_INFO,
    ETHTOOL_GSTRINGS,
    ETHTOOL_SFEATURES,
    MAX_FEATURES,
    SCTP_CRC,
    EthtoolError,
    FeatureState,
    check_device_name,
    encode_gfeatures,
    encode_gstrings,
    encode_sfeatures,
    encode_sset_info,
    parse_gfeatures,
    parse_gstrings,
    parse_sset_info,
)
from ipsec_mesh.svcnat.routes import RTN_UNICAST, _KernelRoute
from tests.unit.test_svcnat import FakeNft, FakeRoutes, ep, service


def test_sset_info_asks_for_the_features_set_and_bounds_the_count():
    request = encode_sset_info()
    assert struct.unpack_from("=IIQ", request) == (ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES) and len(request) == 20
    assert parse_sset_info(struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 64)) == 64
    for bad in (struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 0, 64),  # the set is not there
                struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, MAX_FEATURES + 1),
                struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0),
                struct.pack("=IIQ", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES)):  # truncated
        with pytest.raises(EthtoolError):
            parse_sset_info(bad)


def names_reply(names, count=None):
    data = b"".join(n.encode().ljust(ETH_GSTRING_LEN, b"\0") for n in names)
    return struct.pack("=III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, len(names) if count is None else count) + data


def test_gstrings_names_index_the_feature_bits_and_overruns_are_refused():
    assert encode_gstrings(3) == bytearray(struct.pack("=III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, 3) + bytes(96))
    full = "x" * ETH_GSTRING_LEN  # a name that fills its slot has no NUL
    assert parse_gstrings(names_reply(["tx-sg", SCTP_CRC, full]), 3) == ["tx-sg", SCTP_CRC, full]
    with pytest.raises(EthtoolError, match="2 names for 3"):
        parse_gstrings(names_reply(["a", "b"]), 3)
    with pytest.raises(EthtoolError, match="overrun"):
        parse_gstrings(names_reply(["a", "b"], count=3), 3)
    with pytest.raises(EthtoolError, match="truncated"):
        parse_gstrings(b"\0" * 8, 3)


def features_reply(words, blocks):
    return struct.pack("=II", ETHTOOL_GFEATURES, words) + b"".join(struct.pack("=IIII", *b) for b in blocks)


def test_gfeatures_reads_one_bit_of_each_field_in_its_word():
    assert encode_gfeatures(2) == bytearray(struct.pack("=II", ETHTOOL_GFEATURES, 2) + bytes(32))
    bit = 37  # word 1, bit 5
    reply = features_reply(2, [(0xFFFFFFFF,) * 4, (1 << 5, 1 << 5, 0, 0)])
    assert parse_gfeatures(reply, 2, bit) == (2, FeatureState(True, True, False, False))
    assert FeatureState(True, True, False, False).text() == "off [requested on]"
    assert FeatureState(False, False, True, False).text() == "on [fixed]"
    assert FeatureState(True, False, False, True).fixed
    with pytest.raises(EthtoolError, match="outside"):
        parse_gfeatures(features_reply(1, [(0, 0, 0, 0)]), 1, bit)
    with pytest.raises(EthtoolError, match="feature words"):
        parse_gfeatures(features_reply(0, []), 2, bit)
    with pytest.raises(EthtoolError, match="outside"):  # the kernel claims two words but sends one
        parse_gfeatures(features_reply(2, [(0, 0, 0, 0)]), 2, bit)


def test_sfeatures_changes_only_the_one_feature():
    off = encode_sfeatures(2, 37, False)
    assert struct.unpack("=IIIIII", off) == (ETHTOOL_SFEATURES, 2, 0, 0, 1 << 5, 0)
    assert struct.unpack("=IIIIII", encode_sfeatures(2, 37, True)) == (ETHTOOL_SFEATURES, 2, 0, 0, 1 << 5, 1 << 5)
    with pytest.raises(ValueError):
        encode_sfeatures(1, 37, False)


@pytest.mark.parametrize("name", ["", "x" * 16, "eth0/1", "a b", "a\0b"])
def test_device_names_that_no_device_can_have_are_refused(name):
    with pytest.raises(EthtoolError):
        check_device_name(name)


class FakeFeatures:
    """Devices with tx-checksum-sctp on unless told; counts the changes it was asked for."""

    def __init__(self, netns=None):
        self.on = {"eth0": True, "eth1": True}
        self.fixed: set[str] = set()
        self.changes: list[tuple[str, bool]] = []

    def state(self, device, feature):
        assert feature == SCTP_CRC
        if device not in self.on:
            raise EthtoolError(device, "read features", "No such device", errno.ENODEV)
        return FeatureState(device not in self.fixed, self.on[device], self.on[device], False)

    def set(self, device, feature, on):
        state = self.state(device, feature)
        if state.active != on and device not in self.fixed:
            self.changes.append((device, on))
            self.on[device] = on
        return self.state(device, feature)

    def close(self):
        pass


class RoutedFakeRoutes(FakeRoutes):
    """IPv4 by eth0, the IPv6 ClusterIP range by eth1."""

    def table(self):
        def route(network, oif):
            return _KernelRoute(ipaddress.ip_network(network), 3, RTN_UNICAST, 0, oif, None, 0, 0, None, False)
        return [route("0.0.0.0/0", 2), route("fd00:96::/64", 3)]

    def link_names(self):
        return {2: "eth0", 3: "eth1"}


class FakeRecord:
    """The offload record in the pod's table: a set that outlives the translation objects using it."""

    def __init__(self, devices=(), fail=None):
        self.devices_now, self.fail, self.log = set(devices), fail, []

    def devices(self):
        if self.fail == "read":
            raise NftError("Could not process rule: Permission denied")
        return frozenset(self.devices_now)

    def add(self, device):
        if self.fail == "write":
            raise NftError("Could not process rule: Permission denied")
        self.log.append(("add", device))
        self.devices_now.add(device)

    def remove(self, device):
        self.log.append(("remove", device))
        self.devices_now.discard(device)


def translation_with(features, record=None):
    record = FakeRecord() if record is None else record
    return ServiceTranslation(nft_factory=FakeNft, routes_factory=RoutedFakeRoutes, features_factory=lambda n: features,
                              record_factory=lambda nft: record)


def test_the_feature_is_off_only_while_an_sctp_port_is_listed_and_only_on_its_devices():
    features = FakeFeatures()
    translation = translation_with(features)
    sctp = service(endpoints=[ep("10.0.0.1")], protocol=ServiceProtocol.SCTP)
    assert translation.apply((service(endpoints=[ep("10.0.0.1")]),))  # TCP only: nothing touched
    assert features.changes == [] and translation.status()["sctp_checksum"] == {"devices": [], "error": ""}
    assert translation.apply((sctp,)) and translation.apply((sctp,))  # idempotent: one change
    assert features.changes == [("eth0", False)] and features.on["eth1"]
    assert translation.status()["sctp_checksum"]["devices"] == [
        {"dev": "eth0", SCTP_CRC: "off", "wanted_off": True, "turned_off_by_sidecar": True}]
    assert translation.apply((service(endpoints=[ep("10.0.0.1")]),))  # SCTP gone: back on
    assert features.changes == [("eth0", False), ("eth0", True)]
    assert translation.status()["sctp_checksum"]["devices"] == []
    dual = service(endpoints=[ep("10.0.0.1"), ep("fd00::1")], protocol=ServiceProtocol.SCTP,
                   ips=("10.96.0.10", "fd00:96::a"))
    assert translation.apply((dual,))
    assert sorted(features.changes[2:]) == [("eth0", False), ("eth1", False)]


def test_a_port_without_endpoints_needs_nothing_and_a_restart_leaves_an_earlier_off_alone():
    features = FakeFeatures()
    assert translation_with(features).apply((service(protocol=ServiceProtocol.SCTP),))
    assert features.changes == []
    features.on["eth0"] = False  # as an earlier instance left it
    translation = translation_with(features)
    sctp = service(endpoints=[ep("10.0.0.1")], protocol=ServiceProtocol.SCTP)
    assert translation.apply((sctp,)) and translation.apply(()) and features.changes == []
    assert not features.on["eth0"]  # not known to be ours: not turned on (docs/services.md says so)


def test_a_feature_that_cannot_be_turned_off_is_reported_and_blocks_readiness():
    features = FakeFeatures()
    features.fixed.add("eth0")
    translation = translation_with(features)
    assert translation.apply((service(endpoints=[ep("10.0.0.1")], protocol=ServiceProtocol.SCTP),))
    assert "tx-checksum-sctp is still on [fixed]" in translation.problem()
    status = translation.status()["sctp_checksum"]
    assert status["devices"][0][SCTP_CRC] == "on [fixed]" and "eth0" in status["error"]
    assert translation.apply(()) and translation.problem() is None


def test_a_restart_turns_back_on_what_an_earlier_instance_turned_off_and_only_that():
    features, record = FakeFeatures(), FakeRecord()
    sctp = service(endpoints=[ep("10.0.0.1")], protocol=ServiceProtocol.SCTP)
    assert translation_with(features, record).apply((sctp,))
    assert record.log == [("add", "eth0")] and features.changes == [("eth0", False)]  # recorded first
    restarted = translation_with(features, record)
    assert restarted.apply((sctp,)) and features.changes == [("eth0", False)]  # no moment on
    assert restarted.status()["sctp_checksum"]["devices"][0]["turned_off_by_sidecar"]
    assert restarted.apply(()) and features.changes == [("eth0", False), ("eth0", True)]
    assert record.devices_now == set() and restarted.status()["sctp_checksum"]["devices"] == []
    # Stopped between the record and the ioctl: the next instance finds a record of a device that is on.
    record.devices_now.add("eth1")
    assert translation_with(features, record).apply(()) and record.devices_now == set()
    assert features.changes == [("eth0", False), ("eth0", True)] and features.on["eth1"]


def test_the_feature_is_not_turned_off_without_its_record_and_an_unreadable_record_is_reported():
    features = FakeFeatures()
    sctp = service(endpoints=[ep("10.0.0.1")], protocol=ServiceProtocol.SCTP)
    translation = translation_with(features, FakeRecord(fail="write"))
    assert translation.apply((sctp,)) and features.changes == []
    assert "Permission denied" in translation.problem()
    unreadable = translation_with(features, FakeRecord(fail="read"))
    assert unreadable.apply((sctp,)) and features.changes == []
    assert "cannot read which devices an earlier sidecar changed" in unreadable.problem()
    assert "earlier sidecar" in unreadable.status()["sctp_checksum"]["error"]


def test_a_fixed_feature_is_never_recorded():
    features, record = FakeFeatures(), FakeRecord()
    features.fixed.add("eth0")
    assert translation_with(features, record).apply((service(endpoints=[ep("10.0.0.1")],
                                                             protocol=ServiceProtocol.SCTP),))
    assert record.log == []
