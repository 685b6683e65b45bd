"""A device's offload features over the SIOCETHTOOL ioctl (linux/ethtool.h), for SCTP's checksum.

Why the sidecar touches them: an SCTP socket that calls a ClusterIP has a route without XFRM, so
SCTP leaves its CRC32c to the device (CHECKSUM_PARTIAL, when the device offers
`tx-checksum-sctp`, as veths do). After the pod's DNAT the packet is re-routed into an ESP SA,
and the XFRM output path resolves the pending checksum as an Internet checksum, not CRC32c: the
server drops every packet. With the feature off SCTP computes CRC32c itself (docs/services.md).

Why the ioctl and not ethtool netlink: the ioctl's feature commands (ETHTOOL_GSSET_INFO,
ETHTOOL_GSTRINGS, ETHTOOL_GFEATURES, ETHTOOL_SFEATURES) are generic (no driver hook), exist on
every kernel the mesh runs on, and need neither a generic-netlink family lookup nor nested bitsets.
Feature names are looked up, never hard-coded as bits: the bit numbers differ between kernels.

OffloadRecord: which devices the sidecar turned `tx-checksum-sctp` off on, kept in the pod's own
namespace. Why in the kernel: the feature belongs to the pod's device, which outlives the sidecar
process as the SAs and the translation table do. A restarted sidecar that remembered only in
memory could not tell its own change from someone else's, and left the feature off after the last
SCTP port went. So each device whose feature we turn off (it was on) is an element of the set
OFFLOAD_SET in the mesh's table: added before the ioctl that turns the feature off, removed after
the ioctl that turns it back on. A sidecar stopped between the two leaves an element for a device
whose feature is on, which the next instance turns on (no change) and removes; never a device
turned off without an element. Element values go through libnftables' JSON input (no quoting).
"""

from __future__ import annotations

import array
import errno
import fcntl
import socket
import struct

from ..records import record
from ..xfrm import XfrmError
from ..xfrm.channel import NetnsRef, socket_in_netns
from .nft import Nft, NftError
from .ruleset import FAMILY, OFFLOAD_SET, TABLE, TABLE_COMMENT

SIOCETHTOOL = 0x8946  # linux/sockios.h
ETHTOOL_GSTRINGS, ETHTOOL_GSSET_INFO, ETHTOOL_GFEATURES, ETHTOOL_SFEATURES = 0x1B, 0x37, 0x3A, 0x3B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
IFNAMSIZ = 16
IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: the name, then a union led by the ifr_data pointer
#: Far above any kernel's NETDEV_FEATURE_COUNT (64 bits today): bounds what a reply can make us allocate.
MAX_FEATURES = 1024
FEATURE_WORDS_MAX = MAX_FEATURES // 32
SCTP_CRC = "tx-checksum-sctp"

SSET_INFO = struct.Struct("=IIQ")  # cmd, reserved, sset_mask; then one u32 count per set bit
GSTRINGS = struct.Struct("=III")  # cmd, string_set, len; then len names of ETH_GSTRING_LEN bytes
FEATURES_HEADER = struct.Struct("=II")  # cmd, size (in 32-bit words); then blocks
GET_BLOCK = struct.Struct("=IIII")  # available, requested, active, never_changed
SET_BLOCK = struct.Struct("=II")  # valid, requested
#: Devices the record may hold (the kernel refuses more): a pod has a handful; bounds what a read returns.
MAX_RECORDED = 64
_RECORD_SET = {"family": FAMILY, "table": TABLE, "name": OFFLOAD_SET}
_MISSING = "No such file or directory"  # libnftables' text for ENOENT: no table, set or element


class EthtoolError(Exception):
    """A device's features could not be read or changed, or the kernel's answer made no sense."""

    def __init__(self, device: str, operation: str, detail: str, code: int | None = None):
        self.device, self.operation, self.code = device, operation, code
        super().__init__(f"{device}: cannot {operation}: {detail}")


def check_device_name(name: str) -> bytes:
    """The name as struct ifreq holds it; EthtoolError for what no device can be called."""
    raw = name.encode("ascii", "replace")
    if not 0 < len(raw) < IFNAMSIZ or any(c in raw for c in b"\0/?: \t\n"):
        raise EthtoolError(repr(name)[:40], "address the device", "not a device name")
    return raw


def encode_sset_info() -> bytearray:
    """ETHTOOL_GSSET_INFO asking for the size of the features string set."""
    return bytearray(SSET_INFO.pack(ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES) + bytes(4))


def parse_sset_info(data: bytes, device: str = "?") -> int:
    """How many features the kernel names."""
    if len(data) < SSET_INFO.size + 4:
        raise EthtoolError(device, "count features", "truncated ETHTOOL_GSSET_INFO reply")
    cmd, _reserved, mask = SSET_INFO.unpack_from(data)
    if cmd != ETHTOOL_GSSET_INFO or mask != 1 << ETH_SS_FEATURES:
        raise EthtoolError(device, "count features", f"the kernel has no features string set (mask {mask:#x})")
    (count,) = struct.unpack_from("=I", data, SSET_INFO.size)
    if not 0 < count <= MAX_FEATURES:
        raise EthtoolError(device, "count features", f"{count} features (at most {MAX_FEATURES})")
    return count


def encode_gstrings(count: int) -> bytearray:
    return bytearray(GSTRINGS.pack(ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count) + bytes(count * ETH_GSTRING_LEN))


def parse_gstrings(data: bytes, count: int, device: str = "?") -> list[str]:
    """The feature names, index = feature bit."""
    if len(data) < GSTRINGS.size:
        raise EthtoolError(device, "name features", "truncated ETHTOOL_GSTRINGS reply")
    cmd, string_set, length = GSTRINGS.unpack_from(data)
    if cmd != ETHTOOL_GSTRINGS or string_set != ETH_SS_FEATURES or length != count:
        raise EthtoolError(device, "name features", f"{length} names for {count} features")
    if len(data) < GSTRINGS.size + count * ETH_GSTRING_LEN:
        raise EthtoolError(device, "name features", "names overrun the reply")
    names = []
    for index in range(count):
        start = GSTRINGS.size + index * ETH_GSTRING_LEN
        names.append(data[start : start + ETH_GSTRING_LEN].split(b"\0", 1)[0].decode("ascii", "replace"))
    return names


def encode_gfeatures(words: int) -> bytearray:
    return bytearray(FEATURES_HEADER.pack(ETHTOOL_GFEATURES, words) + bytes(words * GET_BLOCK.size))


@record(frozen=True)
class FeatureState:
    """One feature of one device, as ETHTOOL_GFEATURES reports it."""

    available: bool  # the device lets it be changed (hw_features)
    requested: bool
    active: bool
    never_changed: bool

    @property
    def fixed(self) -> bool:
        return not self.available or self.never_changed

    def text(self) -> str:
        """As `ethtool -k` prints it: on/off, [fixed] when it cannot be changed, [requested x] if it differs."""
        words = ["on" if self.active else "off"]
        if self.fixed:
            words.append("[fixed]")
        elif self.requested != self.active:
            words.append(f"[requested {'on' if self.requested else 'off'}]")
        return " ".join(words)


def parse_gfeatures(data: bytes, words: int, bit: int, device: str = "?") -> tuple[int, FeatureState]:
    """The kernel's own feature word count (what ETHTOOL_SFEATURES insists on) and feature `bit`'s state."""
    if len(data) < FEATURES_HEADER.size:
        raise EthtoolError(device, "read features", "truncated ETHTOOL_GFEATURES reply")
    cmd, size = FEATURES_HEADER.unpack_from(data)
    if cmd != ETHTOOL_GFEATURES or not 0 < size <= FEATURE_WORDS_MAX:
        raise EthtoolError(device, "read features", f"{size} feature words")
    if bit // 32 >= min(size, words) or len(data) < FEATURES_HEADER.size + words * GET_BLOCK.size:
        raise EthtoolError(device, "read features", f"feature bit {bit} outside the {size} words returned")
    fields = GET_BLOCK.unpack_from(data, FEATURES_HEADER.size + (bit // 32) * GET_BLOCK.size)
    mask = 1 << (bit % 32)
    return size, FeatureState(*(bool(field & mask) for field in fields))


def encode_sfeatures(words: int, bit: int, on: bool) -> bytearray:
    """ETHTOOL_SFEATURES changing feature `bit` alone (valid only for it: every other feature is left as is)."""
    if not 0 <= bit < words * 32 or words > FEATURE_WORDS_MAX:
        raise ValueError(f"feature bit {bit} outside {words} words")
    blocks = [SET_BLOCK.pack(1 << (bit % 32) if index == bit // 32 else 0,
                             (1 << (bit % 32)) if on and index == bit // 32 else 0) for index in range(words)]
    return bytearray(FEATURES_HEADER.pack(ETHTOOL_SFEATURES, words) + b"".join(blocks))


def encode_ifreq(name: bytes, data: array.array) -> bytearray:
    """struct ifreq whose ifr_data points at `data` (kept alive by the caller during the ioctl)."""
    address, _ = data.buffer_info()
    request = struct.pack("@16sP", name, address)  # native: a pointer
    return bytearray(request + bytes(IFREQ_SIZE - len(request)))


class DeviceFeatures:
    """Offload features of the devices of one network namespace."""

    def __init__(self, netns: NetnsRef = None):
        self.netns = netns
        self._sock: socket.socket | None = None
        self._bits: dict[str, int] | None = None  # feature name -> bit: one string set per kernel

    def _ioctl(self, device: str, request: bytearray, operation: str) -> tuple[int, bytes]:
        name = check_device_name(device)
        if self._sock is None:
            try:  # any socket of the namespace carries SIOCETHTOOL; AF_UNIX needs no IP family enabled
                self._sock = socket_in_netns(self.netns, socket.AF_UNIX, socket.SOCK_DGRAM)
            except XfrmError as exc:
                raise EthtoolError(device, operation, str(exc), exc.errno) from None
        buffer = array.array("B", request)
        try:
            result = fcntl.ioctl(self._sock.fileno(), SIOCETHTOOL, encode_ifreq(name, buffer))
        except OSError as exc:
            raise EthtoolError(device, operation, exc.strerror or str(exc), exc.errno) from None
        return result, buffer.tobytes()

    def bit(self, device: str, feature: str) -> int:
        if self._bits is None:
            _, reply = self._ioctl(device, encode_sset_info(), "count features")
            count = parse_sset_info(reply, device)
            _, reply = self._ioctl(device, encode_gstrings(count), "name features")
            self._bits = {name: index for index, name in enumerate(parse_gstrings(reply, count, device)) if name}
        if feature not in self._bits:
            raise EthtoolError(device, "find a feature", f"the kernel has no feature {feature!r}", errno.ENOENT)
        return self._bits[feature]

    def _read(self, device: str, bit: int) -> tuple[int, FeatureState]:
        words = bit // 32 + 1
        _, reply = self._ioctl(device, encode_gfeatures(words), "read features")
        return parse_gfeatures(reply, words, bit, device)

    def state(self, device: str, feature: str) -> FeatureState:
        """The feature's state on `device` now."""
        return self._read(device, self.bit(device, feature))[1]

    def set(self, device: str, feature: str, on: bool) -> FeatureState:
        """Request `feature` on or off on `device`; the state the kernel reports afterwards (no request when
        it is already so: idempotent, and a fixed feature that already is as wanted is no error)."""
        bit = self.bit(device, feature)
        words, state = self._read(device, bit)
        if state.active == on and state.requested == on:
            return state
        if state.fixed:
            raise EthtoolError(device, f"turn {feature} {'on' if on else 'off'}", f"it is {state.text()}",
                               errno.EOPNOTSUPP)
        self._ioctl(device, encode_sfeatures(words, bit, on), f"turn {feature} {'on' if on else 'off'}")
        return self._read(device, bit)[1]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class OffloadRecord:
    """The OFFLOAD_SET of one namespace's translation table."""

    def __init__(self, nft: Nft):
        self._nft = nft

    def devices(self) -> frozenset[str]:
        """The devices recorded now (none when there is no table or set); NftError if unreadable or not ours."""
        try:
            items = self._nft.run_json([{"list": {"set": dict(_RECORD_SET)}}])
        except NftError as exc:
            if _MISSING in str(exc):
                return frozenset()
            raise
        listing = next((item["set"] for item in items if isinstance(item, dict) and "set" in item), {})
        elements = listing.get("elem", [])
        if not isinstance(elements, list) or len(elements) > MAX_RECORDED:
            raise NftError(f"set {OFFLOAD_SET}: not a list of at most {MAX_RECORDED} devices")
        for name in elements:
            try:
                if not isinstance(name, str):
                    raise EthtoolError(repr(name)[:40], "read the record", "not a device name")
                check_device_name(name)
            except EthtoolError as exc:
                raise NftError(f"set {OFFLOAD_SET}: {exc}") from None
        return frozenset(elements)

    def add(self, device: str) -> None:
        check_device_name(device)
        # The table may not exist yet (the first update runs this before its batch): made with its comment.
        self._nft.run(f'table {FAMILY} {TABLE} {{\n  comment "{TABLE_COMMENT}"\n'
                      f"  set {OFFLOAD_SET} {{ type ifname; size {MAX_RECORDED}; }}\n}}\n")
        self._nft.run_json([{"add": {"element": {**_RECORD_SET, "elem": [device]}}}])

    def remove(self, device: str) -> None:
        """Remove `device` (one already gone is no error)."""
        try:
            self._nft.run_json([{"delete": {"element": {**_RECORD_SET, "elem": [device]}}}])
        except NftError as exc:
            if _MISSING not in str(exc):
                raise

