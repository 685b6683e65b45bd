"""Strict readers for untrusted JSON/YAML documents.

Each reader takes the value and the path of the field (for error messages) and
either returns a checked Python value or raises PeerMapError. Unknown keys are
refused so that a typo never silently weakens a policy.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Mapping, Set
from typing import Any, TypeVar

from .errors import PeerMapError

T = TypeVar("T")

_DURATION = re.compile(r"^(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?$")
MAX_DURATION_SECONDS = 10 * 365 * 86400


def obj(value: Any, path: str, required: set[str], optional: Set[str] = frozenset()) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PeerMapError(path, "must be an object")
    for key in value:
        if not isinstance(key, str):
            raise PeerMapError(path, f"key {key!r} is not a string")
    unknown = set(value) - required - optional
    if unknown:
        raise PeerMapError(path, f"unknown field(s) {', '.join(sorted(unknown))}")
    missing = required - set(value)
    if missing:
        raise PeerMapError(path, f"missing field(s) {', '.join(sorted(missing))}")
    return value


def unknown_fields(value: Mapping[str, Any], path: str, known: set[str] | frozenset[str]) -> list[str]:
    """One message per key of `value` not in `known`, naming the field and the likely intended one."""
    import difflib  # only to word an error: not loaded by a sidecar that never sees one

    messages = []
    lowered = {name.lower(): name for name in known}
    for key in sorted(str(k) for k in value if k not in known):
        guess = lowered.get(key.lower()) or next(iter(difflib.get_close_matches(key, sorted(known), 1, 0.6)), None)
        hint = f" (did you mean {guess}?)" if guess else f"; known fields: {', '.join(sorted(known))}"
        messages.append(f"{path}.{key}: unknown field{hint}")
    return messages


def printable(text: str) -> str:
    """`text` with every non-printable character (controls, line breaks, bidi overrides) escaped as
    ``\\uXXXX``: what another party wrote can then never move a terminal's cursor or fake a line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def string(value: Any, path: str, max_length: int = 253, min_length: int = 1) -> str:
    if not isinstance(value, str):
        raise PeerMapError(path, "must be a string")
    if not min_length <= len(value) <= max_length:
        raise PeerMapError(path, f"length must be {min_length}..{max_length}")
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PeerMapError(path, "must be true or false")
    return value


def integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PeerMapError(path, "must be an integer")
    if not low <= value <= high:
        raise PeerMapError(path, f"must be within {low}..{high}")
    return value


def array(value: Any, path: str, item: Callable[[Any, str], T], max_items: int, min_items: int = 0) -> tuple[T, ...]:
    if not isinstance(value, list | tuple):
        raise PeerMapError(path, "must be a list")
    if not min_items <= len(value) <= max_items:
        raise PeerMapError(path, f"must have {min_items}..{max_items} items")
    return tuple(item(element, f"{path}[{index}]") for index, element in enumerate(value))


def choice(value: Any, path: str, enum_type: Callable[[str], T]) -> T:
    try:
        return enum_type(string(value, path, 32))
    except ValueError:
        raise PeerMapError(path, f"unknown value {value!r}") from None


def network(value: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR; a bare address becomes a host network (/32, /128)."""
    text = string(value, path, 43)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise PeerMapError(path, f"not an IP address or CIDR with host bits clear: {exc}") from None


#: Addresses remembered by `ip_address`: a pod's address comes again in its EndpointSlices and in
#: every update of them; the objects are immutable, so all share one. Only valid addresses are kept.
ADDRESS_CACHE_SIZE = 16384


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """ipaddress.ip_address, but through inet_pton (several times faster: peer maps and EndpointSlices
    carry thousands). The same addresses, except that an IPv6 zone (``fe80::1%eth0``) is refused."""
    for family, cls in ((socket.AF_INET, ipaddress.IPv4Address), (socket.AF_INET6, ipaddress.IPv6Address)):
        try:
            return cls(socket.inet_pton(family, text))
        except (OSError, ValueError, TypeError):  # ValueError: an embedded NUL; TypeError: not a str
            continue
    raise ValueError(f"{text!r} is not an IP address")


#: (mask, network) of the unspecified, loopback, link-local and multicast ranges, per IP version.
_NOT_UNICAST = {
    version: tuple((int(net.netmask), int(net.network_address)) for net in map(ipaddress.ip_network, nets))
    for version, nets in ((4, ("0.0.0.0/32", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4")),
                          (6, ("::/128", "::1/128", "fe80::/10", "ff00::/8")))
}


def check_unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address, path: str) -> None:
    """A unicast host address: not unspecified, multicast, loopback or link-local (the `ipaddress`
    properties as integer masks: peer maps and EndpointSlices check thousands)."""
    value = int(address)
    # A loopback or link-local "service" or endpoint would redirect the pod's own local traffic.
    for mask, network in _NOT_UNICAST[address.version]:
        if value & mask == network:
            raise PeerMapError(path, f"{address} is not a unicast host address")


def address(value: Any, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    text = string(value, path, 39)
    try:
        return ip_address(text)
    except ValueError:
        raise PeerMapError(path, f"{text!r} is not an IP address") from None


def host_port(value: Any, path: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT``: the IP as written (brackets removed) and the port."""
    text = string(value, path, 300)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise PeerMapError(path, "must be host:port")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise PeerMapError(path, f"{host!r} is not an IP address") from None
    return host, integer(int(port), path, 0, 65535)


def duration(value: Any, path: str, minimum: int = 1) -> int:
    """Seconds, given as an integer or a Go-style duration such as ``1h30m``."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not value or not match:
            raise PeerMapError(path, f"{value!r} is not a duration like 1h30m or 90s")
        hours, minutes, seconds = (int(group or 0) for group in match.groups())
        value = hours * 3600 + minutes * 60 + seconds
    return integer(value, path, minimum, MAX_DURATION_SECONDS)


def pem_certificate(value: Any, path: str) -> str:
    text = string(value, path, 64 * 1024)
    if not text.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
        raise PeerMapError(path, "is not a PEM certificate")
    return text
