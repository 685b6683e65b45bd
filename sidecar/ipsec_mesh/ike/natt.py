"""NAT detection (RFC 7296 §2.23): hashes of SPIs, address and port."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from functools import lru_cache
from typing import Callable

from .constants import NotifyType
from .errors import InvariantError
from .payloads import NotifyPayload


def nat_hash(spi_i: bytes, spi_r: bytes, address: str, port: int) -> bytes:
    # SHA-1 is what the RFC specifies here; it is an address fingerprint, not a MAC.
    return hashlib.sha1(spi_i + spi_r + _packed(address) + port.to_bytes(2, "big")).digest()


@lru_cache(maxsize=1024)
def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def nat_notifies(spi_i: bytes, spi_r: bytes, local: tuple[str, int], remote: tuple[str, int],
                 fake_source: bool = False,
                 random_bytes: Callable[[int], bytes] | None = None) -> list[NotifyPayload]:
    """NAT_DETECTION_SOURCE_IP and _DESTINATION_IP for a message from `local` to `remote`.

    `fake_source` sends a source hash that cannot match, so the peer believes we are
    behind a NAT and both sides encapsulate ESP in UDP (forced encapsulation).
    """
    if fake_source:
        if random_bytes is None:
            raise InvariantError("a fake source hash needs random bytes")
        source = random_bytes(20)
    else:
        source = nat_hash(spi_i, spi_r, *local)
    return [
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=source),
        NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, data=nat_hash(spi_i, spi_r, *remote)),
    ]


def detect(spi_i: bytes, spi_r: bytes, notifies_source: list[bytes], notify_destination: bytes | None,
           local: tuple[str, int], remote: tuple[str, int]) -> tuple[bool, bool] | None:
    """(we are behind a NAT, the peer is behind a NAT), or None if the peer sent no NAT notifies.

    `local`/`remote` are the addresses the message was received on/from.
    """
    if notify_destination is None or not notifies_source:
        return None
    remote_hash = nat_hash(spi_i, spi_r, *remote)
    peer_natted = not any(hmac.compare_digest(h, remote_hash) for h in notifies_source)
    local_natted = not hmac.compare_digest(notify_destination, nat_hash(spi_i, spi_r, *local))
    return local_natted, peer_natted
