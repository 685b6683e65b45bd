"""Strict readers for untrusted JSON/YAML documents.

Each reader takes the value and the path of the field (for error messages) and
either returns a checked Python value or raises PeerMapError. Unknown keys are
refused so that a typo never silently weakens a policy.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import PeerMapError

T = TypeVar("T")

_DURATION = re.compile(r"^(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?$")
MAX_DURATION_SECONDS = 10 * 365 * 86400


def obj(value: Any, path: str, required: set[str], optional: set[str] = frozenset()) -> Mapping[str, Any]:
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


def address(value: Any, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    text = string(value, path, 39)
    try:
        return ipaddress.ip_address(text)
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
