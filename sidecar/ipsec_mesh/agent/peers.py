"""From the peer map to what the IKE core and the data plane need.

`PeerSet` answers, for a remote address: which peering covers it (longest prefix
wins), and the `PeerConfig` to negotiate with it. Configs are built on first use
and cached per address, so a peer map with a /16 of remote pods costs nothing until
a pod there talks.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from functools import lru_cache

from ..ike import (
    CertCredential,
    Certificate,
    ChildConfig,
    DerError,
    Identity,
    Lifetime,
    PeerConfig,
    ProposalSyntaxError,
    ProtocolId,
    PskCredential,
    TrafficSelector,
    TrustStore,
    certificates_from_pem,
    parse_proposal,
)
from ..meshapi.model import AuthKind, Enforcement, Peer, PeeringPolicy, PeerMap
from ..records import record
from .config import IkeSettings

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
log = logging.getLogger("ipsec_mesh.agent")


class PeerSetError(ValueError):
    """The peer map cannot be used by this sidecar; the message names the peering."""


class CredentialError(PeerSetError):
    """No usable credential: a peering needs one the sidecar lacks, or the operator's
    answer to our CSR cannot be used (garbage PEM, a certificate for another key)."""


@record(frozen=True)
class PeerEntry:
    """One peer network of one peering: the unit of policy programming."""

    policy: PeeringPolicy
    peer: Peer
    network: IpNetwork

    @property
    def enforcement(self) -> Enforcement:
        return self.policy.enforcement

    @property
    def config_name(self) -> str:
        """The name of the PeerConfig (and so of the IKE SAs) built for this entry."""
        return f"{self.policy.name}/{self.peer.name}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.policy.name, self.peer.name, str(self.network))


def _lifetime(seconds: int, inactivity: int = 0) -> Lifetime:
    # Rekey at 90% of the configured lifetime, minus up to 10% jitter; hard limit at 110%.
    seconds = max(seconds, 2)  # below that, rekeys would overlap their own exchanges
    # A rekey starts a fresh CHILD_SA whose count starts again: an inactivity time that
    # reaches the earliest rekey could never be met, so it is not applied.
    rekey_earliest = seconds * 0.8
    return Lifetime(rekey_time=seconds * 0.9, life_time=seconds * 1.1, jitter=seconds * 0.1,
                    inactivity=float(inactivity) if inactivity < rekey_earliest else 0.0)


class PeerSet:
    def __init__(self, peer_map: PeerMap, ike: IkeSettings, *, private_key=None,
                 chain: tuple[Certificate, ...] = ()):
        self.peer_map = peer_map
        self.ike = ike
        self.local_id = Identity.parse(f"fqdn:{peer_map.local.identity}")
        self.local_addresses = tuple(str(a) for a in peer_map.local.addresses)
        self._cert = CertCredential(private_key, list(chain)) if private_key is not None and chain else None
        self.entries: list[PeerEntry] = _one_entry_per_network(
            PeerEntry(policy, peer, network)
            for policy in peer_map.policies for peer in policy.peers for network in peer.addresses
        )
        # Longest prefix first, so the first containing network is the most specific.
        self._by_prefix = sorted(self.entries, key=lambda e: (e.network.version, -e.network.prefixlen))
        self._configs: dict[tuple[str, str], PeerConfig] = {}
        # Checked once, at start: a peering this sidecar cannot serve is refused now, not
        # when its first peer talks.
        self._proposals = {policy.name: _parse_proposals(policy) for policy in peer_map.policies}
        for policy in peer_map.policies:
            self._credential(policy)

    def entry_for(self, remote: str) -> PeerEntry | None:
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return None
        for entry in self._by_prefix:
            if entry.network.version == address.version and address in entry.network:
                return entry
        return None

    def still_allows(self, remote: str, config_name: str, remote_id) -> bool:
        """Whether an IKE SA set up under `config_name` with `remote` may live on under this set.

        The covering peer must be the same (a reused pod IP belongs to someone else now)
        and must still accept the identity the SA authenticated.
        """
        entry = self.entry_for(remote)
        if entry is None or entry.config_name != config_name:
            return False
        identities = entry.peer.identities
        return remote_id is None or not identities or any(remote_id.matches(p) for p in identities)

    def pod_peers(self) -> tuple[str, ...]:
        """The peers that are one address (a pod, a host), in a family we have an address of:
        whom `initiate: peers` connects to. A network (a remote cluster's pod CIDR) names no one."""
        families = {ipaddress.ip_address(a).version for a in self.local_addresses}
        return tuple(dict.fromkeys(
            str(e.network.network_address) for e in self.entries
            if e.network.prefixlen == e.network.max_prefixlen and e.network.version in families))

    def local_address_for(self, remote: str) -> str | None:
        version = ipaddress.ip_address(remote).version
        for a in self.local_addresses:
            if ipaddress.ip_address(a).version == version:
                return a
        return None

    def lookup(self, local: str, remote: str) -> PeerConfig | None:
        """The IKE core's ConfigLookup: None refuses peers outside the peer set."""
        key = (local, remote)
        config = self._configs.get(key)
        if config is None:
            entry = self.entry_for(remote)
            if entry is None:
                return None  # not remembered: spoofed sources would grow the cache without bound
            config = self._configs[key] = self._build(entry, local, remote)
        return config

    def child_for(self, local: str, remote: str) -> ChildConfig | None:
        config = self.lookup(local, remote)
        return config.children[0] if config and config.children else None

    def _credential(self, policy: PeeringPolicy):
        if policy.auth is AuthKind.PSK:
            key = next(k for k in policy.psk_keys if k.initiate)
            return PskCredential(key.secret)
        if self._cert is None:
            raise CredentialError(f"peering {policy.name} uses certificates, but the sidecar has none")
        return self._cert

    def _build(self, entry: PeerEntry, local: str, remote: str) -> PeerConfig:
        policy, peer = entry.policy, entry.peer
        ike = self.ike
        child = ChildConfig(
            name=policy.name,
            local_ts=(TrafficSelector.for_address(local),),
            remote_ts=(TrafficSelector.for_address(remote),),
            esp_proposals=self._proposals[policy.name][1],
            mode="transport",
            lifetime=_lifetime(policy.lifetimes.child_seconds, policy.lifetimes.inactivity_seconds),
            tfc_padding=1280 if policy.tfc_padding else 0,
        )
        trust = None
        if policy.auth is AuthKind.CERTIFICATE:
            trust = _trust_store(peer.trust_bundle or self.peer_map.trust_bundle)
        return PeerConfig(
            name=entry.config_name,
            local_id=self.local_id,
            credential=self._credential(policy),
            remote_ids=tuple(peer.identities),
            psks=tuple(k.secret for k in policy.psk_keys),
            trust=trust,
            ike_proposals=self._proposals[policy.name][0],
            children=(child,),
            ike_lifetime=_lifetime(policy.lifetimes.ike_seconds),
            dpd_delay=float(ike.dpd),
            retransmit=ike.retransmit(),
            fragment_size=ike.fragment_size,
            force_encap=ike.force_encap,
            childless=ike.childless,
        )


def _one_entry_per_network(entries: Iterable[PeerEntry]) -> list[PeerEntry]:
    """One entry per peer network, so that IKE and the kernel policies agree on who governs it.

    Two peerings may name the same network (two remote peerings with one CIDR). The one
    that requires ESP wins over one that only prefers it, then the first in the map.
    """
    chosen: dict[IpNetwork, PeerEntry] = {}
    for entry in entries:
        other = chosen.get(entry.network)
        if other is None:
            chosen[entry.network] = entry
            continue
        keep = entry if (entry.enforcement == Enforcement.REQUIRE and other.enforcement != Enforcement.REQUIRE) \
            else other
        log.warning("peer network %s is in peerings %s and %s: %s governs it", entry.network,
                    other.policy.name, entry.policy.name, keep.policy.name)
        chosen[entry.network] = keep
    return list(chosen.values())


def _parse_proposals(policy: PeeringPolicy):
    try:
        return (tuple(parse_proposal(p, ProtocolId.IKE) for p in policy.ike_proposals),
                tuple(parse_proposal(p, ProtocolId.ESP) for p in policy.esp_proposals))
    except ProposalSyntaxError as exc:
        raise PeerSetError(f"peering {policy.name}: {exc}") from None


@lru_cache(maxsize=64)
def _trust_store(pems: tuple[str, ...]) -> TrustStore | None:
    if not pems:
        return None
    try:
        return TrustStore([certificates_from_pem(p.encode())[0] for p in pems])
    except DerError as exc:
        raise PeerSetError(f"bad certificate in the trust bundle: {exc}") from None
