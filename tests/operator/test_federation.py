"""Bundle federation (federation.py): the SPIFFE bundle endpoint, fetching, and what is refused.

Real TLS endpoints on 127.0.0.1 (aiohttp, or a raw TLS server for misbehaviour),
certificates from the operator's own CertificateAuthority.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import pytest
from aiohttp import web

from ipsec_mesh_operator.controller.federation import (
    BUNDLE_PATH,
    MAX_BUNDLE_BYTES,
    BundleError,
    Federation,
    bundle_app,
    decode_bundle,
    encode_bundle,
    endpoint_id,
    fetch_bundle,
    fresh_condition,
)
from ipsec_mesh_operator.model.federation_spec import FederationSpec
from ipsec_mesh_operator.pki.ca import CertificateAuthority
from ipsec_mesh_operator.pki.tls import ServingCertificate

DAY = 86400.0
NAMES = ("localhost", "127.0.0.1")


def new_ca(now: float) -> CertificateAuthority:
    return CertificateAuthority.create(now, 7 * DAY, 400 * DAY)


class Endpoint:
    """A bundle endpoint on 127.0.0.1: TLS certificate for `trust_domain` from `signer`, serving `bundle()`."""

    def __init__(self, signer: CertificateAuthority, trust_domain: str, bundle, now: float):
        self.tls = ServingCertificate(NAMES, endpoint_id(trust_domain))
        self.tls.refresh(signer, now)
        self.app = bundle_app(bundle, 60)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> Endpoint:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.tls.context)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *_) -> None:
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{BUNDLE_PATH}"


@contextlib.asynccontextmanager
async def misbehaving_endpoint(handle):
    """East's bundle endpoint (a valid certificate) whose connection handler writes whatever a test
    wants (slow, oversized, redirects): yields a function that fetches from it, trusting east."""
    now = time.time()
    east = new_ca(now)
    tls = ServingCertificate(NAMES, endpoint_id("east.example"))
    tls.refresh(east, now)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}{BUNDLE_PATH}"
    async with server:
        yield lambda **kwargs: fetch_bundle(url, east.trust_bundle(now), "east.example", now, **kwargs)


async def refusal(handle, **kwargs) -> str:
    """The reason a fetch from a misbehaving endpoint is refused with."""
    async with misbehaving_endpoint(handle) as fetch:
        with pytest.raises(BundleError) as caught:
            await fetch(**kwargs)
    return caught.value.reason


async def test_fetch_returns_the_published_bundle_authenticated_by_the_bootstrap():
    now = time.time()
    east = new_ca(now)
    async with Endpoint(east, "east.example", lambda: (east.trust_bundle(now), 7), now) as endpoint:
        bundle = await fetch_bundle(endpoint.url, east.trust_bundle(now), "east.example", now)
    assert bundle.pems == east.trust_bundle(now)
    assert bundle.sequence == 7 and bundle.refresh_hint == 60


@pytest.mark.parametrize("signer, served, endpoint_domain, reason", [
    # wrong chain: an impostor serves its own bundle, its certificate from its own CA, under east's SPIFFE ID
    ("other", "other", "east.example", "untrusted"),
    # the endpoint is east's, but the bundle it serves lacks east's CA (the next refresh could not authenticate)
    ("east", "other", "east.example", "broken-chain"),
    # signed by a CA we trust, but it proves west's endpoint ID: not the bundle of east
    ("east", "east", "west.example", "wrong-trust-domain"),
], ids=["wrong-chain", "bundle-without-endpoint-ca", "another-trust-domain"])
async def test_endpoints_that_do_not_chain_to_what_we_trust_are_refused(signer, served, endpoint_domain, reason):
    now = time.time()
    cas = {"east": new_ca(now), "other": new_ca(now)}
    async with Endpoint(cas[signer], endpoint_domain, lambda: (cas[served].trust_bundle(now), 1), now) as endpoint:
        with pytest.raises(BundleError) as caught:
            await fetch_bundle(endpoint.url, cas["east"].trust_bundle(now), "east.example", now)
    assert caught.value.reason == reason


def test_expired_and_not_yet_valid_authorities_are_refused():
    now = time.time()
    east = new_ca(now)
    raw = encode_bundle(east.trust_bundle(now), 1, 60)
    assert decode_bundle(raw, now).pems == east.trust_bundle(now)
    with pytest.raises(BundleError) as caught:
        decode_bundle(raw, now + 500 * DAY)
    assert caught.value.reason == "expired"
    with pytest.raises(BundleError) as caught:
        decode_bundle(raw, now - DAY)
    assert caught.value.reason == "not-yet-valid"


def test_a_jwk_that_disagrees_with_its_certificate_or_a_leaf_is_refused():
    now = time.time()
    east, other = new_ca(now), new_ca(now)
    doc = json.loads(encode_bundle(east.trust_bundle(now), 1, 60))
    doc["keys"][0]["x"] = json.loads(encode_bundle(other.trust_bundle(now), 1, 60))["keys"][0]["x"]
    with pytest.raises(BundleError) as caught:
        decode_bundle(json.dumps(doc).encode(), now)
    assert caught.value.reason == "malformed"
    # A leaf (an endpoint certificate) posing as an authority.
    tls = ServingCertificate(NAMES, endpoint_id("east.example"))
    tls.refresh(east, now)
    leaf = east.issue(east.certs[east.ring.newest().id].public_key(), _leaf_identity(), 3600, now)
    from cryptography.hazmat.primitives import serialization
    doc = json.loads(encode_bundle(east.trust_bundle(now), 1, 60))
    doc["keys"][0]["x5c"] = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
    with pytest.raises(BundleError) as caught:
        decode_bundle(json.dumps(doc).encode(), now)
    assert caught.value.reason == "not-a-ca"
    for garbage in (b"", b"[]", b'{"keys": {}}', b'{"keys": [{"use": "x509-svid", "x5c": ["%%%"]}]}', b'{"keys": []}',
                    b'{"keys": [{"use": "other"}]}', b"\xff\xfe"):
        with pytest.raises(BundleError):
            decode_bundle(garbage, now)


def _leaf_identity():
    from ipsec_mesh_operator.pki.ca import LeafIdentity
    return LeafIdentity("leaf.example")


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_oversized_bundle_is_refused_before_it_is_read_whole(chunked):
    body = b"x" * (MAX_BUNDLE_BYTES * 4)

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for offset in range(0, len(body), 8192):
                writer.write(b"%x\r\n" % 8192 + body[offset:offset + 8192] + b"\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    assert await refusal(handle) == "oversized"


async def test_a_redirect_is_never_followed():

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: https://attacker.example/bundle\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    assert await refusal(handle) == "redirect"


async def test_a_slow_endpoint_is_abandoned_at_the_timeout_and_its_connection_closed():
    closed = asyncio.Event()
    dripped = []

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        try:
            for _ in range(1000):  # one byte per 50 ms: 50 s for the whole body
                writer.write(b" ")
                await writer.drain()
                dripped.append(1)
                if reader.at_eof():
                    break
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        finally:
            closed.set()
            writer.close()

    assert await refusal(handle, timeout=0.5) == "timeout"
    await asyncio.wait_for(closed.wait(), 30)
    assert len(dripped) < 1000  # the client hung up long before the body was complete


def _spec(url: str, interval: int = 60) -> FederationSpec:
    return FederationSpec(url, "east.example", ("ConfigMap", "east-bootstrap", "ca.crt"), interval)


async def test_endpoint_down_keeps_the_last_good_bundle_reports_stale_and_backs_off():
    clock = [time.time()]
    east = new_ca(clock[0])
    federation = Federation(lambda: clock[0], timeout=5)
    bootstrap = east.trust_bundle(clock[0])
    endpoint = Endpoint(east, "east.example", lambda: (east.trust_bundle(clock[0]), 1), clock[0])
    async with endpoint:
        state = await federation.refresh(("batch", "to-east"), "east", _spec(endpoint.url), bootstrap)
    assert state.fresh and state.bundle == bootstrap
    assert fresh_condition(federation.of(("batch", "to-east")), clock[0])[:2] == (True, "Fetched")
    # Down: each attempt fails, the bundle stays, the retries back off 5, 10, 20 s, capped at the interval.
    delays = []
    for _ in range(6):
        clock[0] = state.next_attempt
        state = await federation.refresh(("batch", "to-east"), "east", _spec(endpoint.url), bootstrap)
        delays.append(state.next_attempt - clock[0])
        assert state.bundle == bootstrap and not state.fresh
        assert state.last_error.startswith("unreachable")
    assert delays == [5, 10, 20, 40, 60, 60]
    ok, reason, message = fresh_condition(federation.of(("batch", "to-east")), clock[0])
    assert (ok, reason) == (False, "Stale") and "keeping the bundle" in message
    # Not due yet: no attempt is made (the endpoint is not hammered).
    before = state
    assert await federation.refresh(("batch", "to-east"), "east", _spec(endpoint.url), bootstrap) == before


async def test_refresh_learns_the_successor_ca_then_authenticates_with_it_and_a_replaced_ca_is_refused():
    now = time.time()
    east = new_ca(now - 1000)
    bootstrap = east.trust_bundle(now)
    clock = [now]
    publisher = [east]
    federation = Federation(lambda: clock[0])
    endpoint = Endpoint(east, "east.example", lambda: (publisher[0].trust_bundle(clock[0]), 1), clock[0])
    async with endpoint:
        # Rotation with a 2 s propagation (interval 0: due at once).
        assert east.rotate_if_due(now, 0, 2, 400 * DAY)
        state = await federation.refresh(("ns", "p"), "east", _spec(endpoint.url, 5), bootstrap)
        assert len(state.bundle) == 2 and state.bundle != bootstrap
        # After activation the endpoint's certificate comes from the new CA: only the fetched bundle trusts it.
        await asyncio.sleep(2.1)
        clock[0] = time.time()
        assert endpoint.tls.refresh(east, clock[0])
        with pytest.raises(BundleError):
            await fetch_bundle(endpoint.url, bootstrap, "east.example", clock[0])
        clock[0] += 5
        state = await federation.refresh(("ns", "p"), "east", _spec(endpoint.url, 5), bootstrap)
        assert state.fresh and state.last_error is None
        learned = state.bundle
        # The endpoint now answers with a CA that replaced east's outright (no overlap): it does
        # not chain to what was trusted, so it is refused and the learned bundle kept.
        replaced = new_ca(clock[0])
        publisher[0] = replaced
        assert endpoint.tls.refresh(replaced, clock[0])
        clock[0] += 5
        state = await federation.refresh(("ns", "p"), "east", _spec(endpoint.url, 5), bootstrap)
    assert state.last_error.startswith("untrusted")
    assert state.bundle == learned


async def test_a_new_bootstrap_re_pins():
    now = time.time()
    east, replaced = new_ca(now), new_ca(now)
    federation = Federation(lambda: now)
    endpoint = Endpoint(replaced, "east.example", lambda: (replaced.trust_bundle(now), 1), now)
    async with endpoint:
        state = await federation.refresh(("ns", "p"), "east", _spec(endpoint.url), east.trust_bundle(now))
        assert state.last_error.startswith("untrusted") and state.bundle == east.trust_bundle(now)
        state = await federation.refresh(("ns", "p"), "east", _spec(endpoint.url), replaced.trust_bundle(now))
    assert state.fresh and state.bundle == replaced.trust_bundle(now)


def test_the_peering_status_reports_staleness_without_calling_the_peering_degraded():
    from ipsec_mesh_operator.model.peering_status import PeeringHealth, desired_status

    health = PeeringHealth(members=1, peers=0, established_sas=0, reporting=1, errors=())
    stale = (False, "Stale", "east: keeping the bundle fetched 600s ago")
    status = desired_status(None, 1, health, [], (True, "MeshCA", "ok"), [], None, stale)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["TrustBundlesFresh"]["status"] == "False"
    assert conditions["TrustBundlesFresh"]["reason"] == "Stale"
    assert conditions["Degraded"]["status"] == "False" and conditions["Ready"]["status"] == "True"
    plain = desired_status(None, 1, health, [], (True, "MeshCA", "ok"), [])
    assert "TrustBundlesFresh" not in {c["type"] for c in plain["conditions"]}
