"""Issue 10, item 2: a cookie-answering IKE_SA_INIT flood from many configured addresses.

50 configured sources x 20 half-open SAs each (the per-source limit) filled the 1,000
half-open slots, and a legitimate peer was refused until they timed out (about 24 s).
Now a source with fewer half-open SAs than the heaviest one takes the oldest slot of
that one, so the legitimate handshake goes through at once, with no retransmission,
while the flood goes on.
"""

from __future__ import annotations

from ipsec_mesh.ike import ExchangeType, NotifyType, single_peer_lookup
from ipsec_mesh.ike import message as codec
from ipsec_mesh.ike.endpoint import IkeEndpoint
from ipsec_mesh.ike.keyexchange import start_key_exchange
from ipsec_mesh.ike.payloads import KePayload, Message, NoncePayload, NotifyPayload, SaPayload
from ipsec_mesh.ike.proposals import engine_default_ike_proposals
from tests.support.ikesim import Network, child_config, psk_config

A, B = "10.0.0.1", "10.0.0.2"
ATTACKERS = [f"10.0.1.{i}" for i in range(1, 51)]


class CookieAnsweringFlood:
    """Configured addresses without credentials: IKE_SA_INIT, answer the COOKIE, never IKE_AUTH."""

    def __init__(self, node):
        self.node = node
        self.proposal = engine_default_ike_proposals()[1].to_payload(1)
        self.ke = start_key_exchange(31).public_data
        self.sent = 0

    def _request(self, spi: bytes, cookie: bytes | None) -> bytes:
        payloads = [SaPayload([self.proposal]), KePayload(31, self.ke), NoncePayload(spi * 4)]
        if cookie is not None:
            payloads.insert(0, NotifyPayload(NotifyType.COOKIE, data=cookie))
        return codec.encode(Message(spi, bytes(8), ExchangeType.IKE_SA_INIT, True, False, 0, payloads))

    def round(self, now: float) -> None:
        """One new half-open attempt from every attacking address."""
        endpoint = self.node.endpoint
        for address in ATTACKERS:
            self.sent += 1
            spi = self.sent.to_bytes(8, "big")
            endpoint.receive(self._request(spi, None), (B, 500), (address, 500), now)
            replies = endpoint.datagrams()  # the network collected B's other output before this round
            cookie = next((p.data for d in replies for p in codec.decode(d.data).payloads
                           if isinstance(p, NotifyPayload) and p.type == NotifyType.COOKIE), None)
            if cookie is not None:
                endpoint.receive(self._request(spi, cookie), (B, 500), (address, 500), now)
                endpoint.datagrams()  # the IKE_SA_INIT response goes to the attacker


def init_requests_from(net: Network, address: str) -> int:
    return sum(1 for d in net.delivered if d.local[0] == address
               and codec.peek_header(d.data).exchange == ExchangeType.IKE_SA_INIT)


def test_a_legitimate_handshake_needs_no_retransmission_during_a_cookie_answering_flood():
    net = Network()
    a_cfg = psk_config("to-b", "a.mesh.test", "b.mesh.test", child_config(A, B))
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, A))
    a = net.add("a", A, single_peer_lookup(a_cfg))
    b = net.add("b", B, single_peer_lookup(b_cfg, [A, *ATTACKERS]))  # the attackers are configured peers
    flood = CookieAnsweringFlood(b)
    for _ in range(25):
        flood.round(net.now)
    half_open = b.endpoint._half_open
    assert half_open.total == b.endpoint.half_open_limit == 1000  # the table is full

    a.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])
    for _ in range(200):  # the flood goes on between every delivery
        if a.established or not net.step():
            break
        flood.round(net.now)
    assert a.established and b.established
    # IKE_SA_INIT, then again with the COOKIE: no retransmission was needed.
    assert init_requests_from(net, A) == 2
    assert half_open.total <= b.endpoint.half_open_limit
    assert max(half_open.count(s) for s in ATTACKERS) <= b.endpoint.half_open_limit_per_source
    assert b.endpoint.counters["evicted_half_open"] > 0


def test_a_half_open_limit_of_zero_refuses_every_ike_sa_init_without_an_exception():
    """The full-table path once unpacked `oldest_of_heaviest()` of an empty table (None)."""
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, A))
    endpoint = IkeEndpoint(single_peer_lookup(b_cfg), half_open_limit=0)
    proposal = engine_default_ike_proposals()[1].to_payload(1)
    request = Message(b"\x01" * 8, bytes(8), ExchangeType.IKE_SA_INIT, True, False, 0,
                      [SaPayload([proposal]), KePayload(31, start_key_exchange(31).public_data),
                       NoncePayload(b"n" * 32)])
    endpoint.receive(codec.encode(request), (B, 500), (A, 500), 0.0)
    assert endpoint.counters["refused_half_open_limit"] == 1
    assert not endpoint.sas and not endpoint.datagrams()
