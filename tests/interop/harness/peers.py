"""Two charons configured as mirror images of each other: the usual test setup."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .charon import Charon
from .netns import Namespace
from .pki import CertificateAuthority
from .swanctl import Child, Connection, Tree

DEFAULT_PSK = "interop-test-psk-0123456789abcdef"


@dataclass
class Side:
    """One end: its namespace, the address it uses, and its IKE identity."""

    ns: Namespace
    addr: str
    ident: str
    settings: Tree = field(default_factory=dict)   # strongswan.conf charon.* overrides


def configure(charon: Charon, me: Side, peer: Side, conn: str, *,
              peer_addr: str | None = None, ca: CertificateAuthority | None = None,
              key_type: str = "ecdsa", psk: str = DEFAULT_PSK,
              children: dict[str, Child] | None = None, **options: Any) -> Connection:
    """Add connection ``conn`` from ``me`` to ``peer`` (PSK, or certificates from ``ca``).

    ``options`` are ``Connection`` fields (proposals, childless, encap, dpd_delay...).
    ``peer_addr`` overrides where ``peer`` is reached (e.g. its address behind a NAT).
    """
    connection = Connection(local_addrs=me.addr, remote_addrs=peer_addr or peer.addr,
                            local_id=me.ident, remote_id=peer.ident,
                            children=dict(children or {}), **options)
    if ca is None:
        charon.add_psk(psk, me.ident, peer.ident)
    else:
        leaf = ca.issue(me.ident, key_type)
        connection.auth = "pubkey"
        connection.local_certs = charon.add_identity(me.ident, leaf.cert_pem, leaf.key_pem,
                                                     (ca.cert_pem,))
    return charon.add_connection(conn, connection)


def start_pair(left: Side, right: Side, workdir: Path, conn: str = "conn", *,
               fake_esp: bool = False, shim_path: Path | None = None,
               left_peer_addr: str | None = None, right_peer_addr: str = "%any",
               **options: Any) -> tuple[Charon, Charon]:
    """Start charon on both sides with mirrored connection ``conn``; nothing initiated.

    The right side accepts from any address by default (it may sit behind a NAT).
    """
    charons = []
    for me, peer, peer_addr in ((left, right, left_peer_addr), (right, left, right_peer_addr)):
        charon = Charon(me.ns, workdir, me.ns.role, fake_esp=fake_esp, shim_path=shim_path,
                        settings=me.settings)
        configure(charon, me, peer, conn, peer_addr=peer_addr, **options)
        charons.append(charon)
    try:
        for charon in charons:
            charon.start()
    except BaseException:
        for charon in charons:
            charon.stop()
        raise
    return charons[0], charons[1]
