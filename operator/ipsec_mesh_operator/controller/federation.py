"""Trust bundle federation between operators (SPIFFE Federation, `https_spiffe` profile).

Each operator can publish its mesh trust bundle (every CA its pods' certificates may
chain to) as a SPIFFE bundle: a JWK Set whose keys carry `use: x509-svid` and the CA
certificate in `x5c`. A peering's `remote.federation` names the other operator's bundle
endpoint, its trust domain and a bootstrap bundle; the operator fetches the remote
bundle, refreshes it, and feeds it to the members' sidecars in place of a copied
ConfigMap.

Why `https_spiffe` and not `https_web`: the endpoint lives on pod or node networks,
often at an IP address, with no Web PKI certificate; with `https_spiffe` the endpoint
proves a SPIFFE ID of the remote trust domain with a certificate from the remote mesh
CA, so the first fetch is authenticated by the bootstrap bundle and every later one by
the bundle fetched before it. Trust follows the remote CA's rotations (the new CA is
published `ca.propagation` before it signs, so a refresh within that window learns it
while the old CA still authenticates the endpoint) and nothing that does not chain to
what was trusted before is ever accepted.

Hostile input: the response is bounded in size and time, redirects are refused (SPIFFE
Federation 7.5.1), every key is checked (a CA certificate, valid now, its JWK members
matching the certificate's key), and the bundle must contain the CA of the endpoint's
own certificate (else the next refresh could not authenticate it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ipsec_mesh.keybounds import rsa_key_problem

from ..model.federation_spec import DEFAULT_REFRESH, MIN_REFRESH, FederationSpec

logger = logging.getLogger("ipsec_mesh_operator.federation")

#: Where the bundle endpoint serves the bundle (the SPIFFE spec leaves the path to the server).
BUNDLE_PATH = "/spiffe/v1/bundle"
#: The bundle endpoint's SPIFFE ID path within its trust domain.
ENDPOINT_ID_PATH = "/ipsec-mesh/bundle-endpoint"
MAX_BUNDLE_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
#: CA certificates one bundle may carry (a sidecar's peer map holds as many per remote).
MAX_BUNDLE_CERTS = 16
MAX_KEYS = 64
MAX_CERT_BYTES = 16 * 1024
FETCH_TIMEOUT = 10.0
#: First retry after a failed fetch; doubles up to the refresh interval.
BACKOFF_BASE = 5.0


class BundleError(Exception):
    """A bundle endpoint or the document it served was refused; `reason` is a short code."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def endpoint_id(trust_domain: str) -> str:
    """The SPIFFE ID an operator's bundle endpoint presents."""
    return f"spiffe://{trust_domain}{ENDPOINT_ID_PATH}"


# ---- the bundle document ------------------------------------------------------


def _b64url(number: int, length: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes(length, "big")).rstrip(b"=").decode()


def _jwk_members(key: Any) -> dict[str, str]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}.get(key.curve.name)
        if curve is None:
            raise BundleError("bad-key", f"curve {key.curve.name} is not allowed")
        numbers = key.public_numbers()
        return {"kty": "EC", "crv": curve[0], "x": _b64url(numbers.x, curve[1]), "y": _b64url(numbers.y, curve[1])}
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"kty": "RSA", "n": _b64url(numbers.n, (numbers.n.bit_length() + 7) // 8),
                "e": _b64url(numbers.e, (numbers.e.bit_length() + 7) // 8)}
    raise BundleError("bad-key", f"{type(key).__name__} keys are not allowed")


def encode_bundle(pems: tuple[str, ...], sequence: int, refresh_hint: int) -> bytes:
    """The SPIFFE bundle (JWK Set) for these CA certificates."""
    keys = []
    for pem in pems:
        cert = x509.load_pem_x509_certificate(pem.encode())
        der = cert.public_bytes(serialization.Encoding.DER)
        keys.append({"use": "x509-svid", **_jwk_members(cert.public_key()), "x5c": [base64.b64encode(der).decode()]})
    return json.dumps({"keys": keys, "spiffe_sequence": sequence, "spiffe_refresh_hint": refresh_hint}).encode()


@dataclass(frozen=True)
class Bundle:
    pems: tuple[str, ...]
    sequence: int | None = None
    refresh_hint: int | None = None


def _ca_from_key(key: Any, index: int, now: float) -> x509.Certificate:
    where = f"keys[{index}]"
    chain = key.get("x5c")
    if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str) \
            or len(chain[0]) > MAX_CERT_BYTES * 4 // 3 + 4:
        raise BundleError("malformed", f"{where}.x5c must hold exactly one certificate")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
    except (binascii.Error, ValueError) as exc:
        raise BundleError("malformed", f"{where}.x5c: {exc}") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise BundleError("not-a-ca", f"{where} is not a CA certificate")
    if now >= cert.not_valid_after_utc.timestamp():
        raise BundleError("expired", f"{where} expired at {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc.timestamp():
        raise BundleError("not-yet-valid", f"{where} is valid only from {cert.not_valid_before_utc.isoformat()}")
    key_of_ca = cert.public_key()
    if isinstance(key_of_ca, rsa.RSAPublicKey) and (problem := rsa_key_problem(key_of_ca)) is not None:
        raise BundleError("bad-key", f"{where}: {problem}")  # it verifies every endpoint certificate after this
    expected = _jwk_members(key_of_ca)
    # A JWK whose members disagree with its own certificate is forged or broken.
    if any(key.get(name) != value for name, value in expected.items()):
        raise BundleError("malformed", f"{where}: the JWK members do not match its certificate's key")
    return cert


def decode_bundle(raw: bytes, now: float) -> Bundle:
    """Parse and check a SPIFFE bundle; raises BundleError."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleError("oversized", f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError("malformed", f"not JSON: {exc}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise BundleError("malformed", "not a JWK Set (no keys list)")
    if len(doc["keys"]) > MAX_KEYS:
        raise BundleError("oversized", f"more than {MAX_KEYS} keys")
    certs: list[x509.Certificate] = []
    for index, key in enumerate(doc["keys"]):
        if not isinstance(key, Mapping):
            raise BundleError("malformed", f"keys[{index}] is not an object")
        if key.get("use") == "jwt-svid":
            continue  # JWT authorities: nothing here verifies JWT-SVIDs
        if key.get("use") != "x509-svid":
            raise BundleError("malformed", f"keys[{index}].use must be x509-svid or jwt-svid")
        certs.append(_ca_from_key(key, index, now))
    if not certs:
        raise BundleError("empty", "the bundle holds no X.509 authority")
    if len(certs) > MAX_BUNDLE_CERTS:
        raise BundleError("oversized", f"more than {MAX_BUNDLE_CERTS} X.509 authorities")
    numbers = {}
    for name in ("spiffe_sequence", "spiffe_refresh_hint"):
        value = doc.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise BundleError("malformed", f"{name} must be a non-negative integer")
        numbers[name] = value
    pems = tuple(cert.public_bytes(serialization.Encoding.PEM).decode() for cert in certs)
    return Bundle(pems, numbers["spiffe_sequence"], numbers["spiffe_refresh_hint"])


def _signed_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    if leaf.issuer != ca.subject:
        return False
    key = ca.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(), leaf.signature_hash_algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


# ---- fetching -----------------------------------------------------------------


def _client_context(trusted: tuple[str, ...]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata="".join(trusted))
    # https_spiffe: the endpoint's SPIFFE ID authenticates it, not a host name (often an IP here).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str], max_bytes: int) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BundleError("malformed", "bad chunk size") from None
            if size < 0 or len(body) + size > max_bytes:
                raise BundleError("oversized", f"the bundle is larger than {max_bytes} bytes")
            if size == 0:
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise BundleError("malformed", "bad Content-Length") from None
        if length < 0 or length > max_bytes:
            raise BundleError("oversized", f"the bundle is larger than {max_bytes} bytes")
        return await reader.readexactly(length)
    body = await reader.read(max_bytes + 1)
    while body and len(body) <= max_bytes:
        more = await reader.read(max_bytes + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > max_bytes:
        raise BundleError("oversized", f"the bundle is larger than {max_bytes} bytes")
    return body


async def _get(url: str, context: ssl.SSLContext, max_bytes: int) -> tuple[bytes, bytes]:
    """GET `url` over TLS: (the server's certificate in DER, the body). One request, no redirects."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        ipaddress.ip_address(host)
        server_hostname = ""  # no SNI for an address
    except ValueError:
        server_hostname = host
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=server_hostname,
                                                       limit=MAX_HEADER_BYTES)
    except ssl.SSLError as exc:
        raise BundleError("untrusted", f"TLS with the endpoint failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise BundleError("unreachable", f"cannot connect: {exc.strerror or exc}") from None
    try:
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        shown = f"[{host}]" if ":" in host else host
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {shown}:{port}\r\nAccept: application/json\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise BundleError("oversized", f"response headers larger than {MAX_HEADER_BYTES} bytes") from None
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
            raise BundleError("malformed", "not an HTTP/1.x response")
        code = int(status[1])
        if 300 <= code < 400:
            raise BundleError("redirect", f"the endpoint answered {code}; redirects are never followed")
        if code != 200:
            raise BundleError("http-status", f"the endpoint answered {code}")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return peer, await _read_body(reader, headers, max_bytes)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
        raise BundleError("unreachable", f"the connection broke: {exc}") from None
    finally:
        writer.close()


async def fetch_bundle(url: str, trusted: tuple[str, ...], trust_domain: str, now: float, *,
                       timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    """Fetch and check the bundle of `trust_domain` from `url`, authenticating the endpoint by `trusted`."""
    if not trusted:
        raise BundleError("untrusted", "no bundle to authenticate the endpoint with")
    try:
        async with asyncio.timeout(timeout):
            peer_der, raw = await _get(url, _client_context(trusted), max_bytes)
    except TimeoutError:
        raise BundleError("timeout", f"no complete answer within {timeout:g}s") from None
    leaf = x509.load_der_x509_certificate(peer_der)
    try:
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [endpoint_id(trust_domain)]:
        raise BundleError("wrong-trust-domain",
                          f"the endpoint is {', '.join(uris) or 'no SPIFFE ID'}, not {endpoint_id(trust_domain)}")
    bundle = decode_bundle(raw, now)
    cas = [x509.load_pem_x509_certificate(pem.encode()) for pem in bundle.pems]
    if not any(_signed_by(leaf, ca) for ca in cas):
        raise BundleError("broken-chain", "the bundle does not hold the CA of the endpoint's own certificate")
    return bundle


# ---- keeping remote bundles current -------------------------------------------


@dataclass(frozen=True)
class RemoteState:
    """What the operator holds for one federated remote (and why)."""

    spec: FederationSpec
    bootstrap: tuple[str, ...]
    #: What the members trust for that remote now: the last good bundle, else the bootstrap.
    bundle: tuple[str, ...]
    sequence: int | None = None
    fetched_at: float | None = None
    last_error: str | None = None
    failures: int = 0
    next_attempt: float = 0.0
    interval: float = DEFAULT_REFRESH

    @property
    def fresh(self) -> bool:
        return self.fetched_at is not None and self.last_error is None

    def condition(self, now: float) -> tuple[str, str]:
        """(reason, message) for the peering's TrustBundlesFresh condition."""
        if self.fresh:
            return "Fetched", f"fetched {now - self.fetched_at:.0f}s ago ({len(self.bundle)} CA(s))"
        if self.fetched_at is None:
            return "NeverFetched", f"using the bootstrap bundle; last attempt: {self.last_error}"
        return "Stale", (f"keeping the bundle fetched {now - self.fetched_at:.0f}s ago; "
                         f"{self.failures} failed attempt(s), last: {self.last_error}")

    def to_status(self, name: str) -> dict[str, Any]:
        return {"remote": name, "endpoint": self.spec.endpoint, "trustDomain": self.spec.trust_domain,
                "fresh": self.fresh, "authorities": len(self.bundle), "failures": self.failures,
                "fetchedAt": None if self.fetched_at is None else int(self.fetched_at),
                "sequence": self.sequence, "lastError": self.last_error}


Fetch = Callable[..., Awaitable[Bundle]]


@dataclass
class Federation:
    """Per (peering, remote): the remote bundle, refreshed when due, the last good one kept."""

    clock: Callable[[], float]
    fetch: Fetch = fetch_bundle
    timeout: float = FETCH_TIMEOUT
    states: dict[tuple[tuple[str, str], str], RemoteState] = field(default_factory=dict)

    async def refresh(self, peering: tuple[str, str], remote: str, spec: FederationSpec,
                      bootstrap: tuple[str, ...]) -> RemoteState:
        key = (peering, remote)
        state = self.states.get(key)
        if state is None or state.spec.endpoint != spec.endpoint or state.spec.trust_domain != spec.trust_domain \
                or state.bootstrap != bootstrap:
            # New, or re-pinned by the administrator: start over from the bootstrap bundle.
            state = RemoteState(spec, bootstrap, bootstrap, interval=spec.refresh_interval)
        elif state.spec != spec:
            state = replace(state, spec=spec, interval=spec.refresh_interval)
        now = self.clock()
        if now >= state.next_attempt:
            state = await self._attempt(state, now)
        self.states[key] = state
        return state

    async def _attempt(self, state: RemoteState, now: float) -> RemoteState:
        try:
            bundle = await self.fetch(state.spec.endpoint, state.bundle, state.spec.trust_domain, now,
                                      timeout=self.timeout)
        except BundleError as exc:
            failures = state.failures + 1
            delay = min(state.spec.refresh_interval, BACKOFF_BASE * 2 ** min(failures - 1, 16))
            if state.last_error != str(exc):
                logger.warning("bundle of %s from %s refused (keeping the one held): %s", state.spec.trust_domain,
                               state.spec.endpoint, exc)
            return replace(state, last_error=str(exc), failures=failures, next_attempt=now + delay)
        interval = state.spec.refresh_interval
        if bundle.refresh_hint:  # the publisher may ask for more frequent refreshes, not for fewer
            interval = max(MIN_REFRESH, min(interval, bundle.refresh_hint))
        if bundle.pems != state.bundle:
            logger.info("bundle of %s updated from %s: %d CA(s)", state.spec.trust_domain, state.spec.endpoint,
                        len(bundle.pems))
        return replace(state, bundle=bundle.pems, sequence=bundle.sequence, fetched_at=now, last_error=None,
                       failures=0, next_attempt=now + interval, interval=interval)

    def of(self, peering: tuple[str, str]) -> dict[str, RemoteState]:
        return {remote: state for (key, remote), state in self.states.items() if key == peering}

    def forget(self, peering: tuple[str, str], keep: frozenset[str] = frozenset()) -> None:
        for key in [k for k in self.states if k[0] == peering and k[1] not in keep]:
            del self.states[key]


def fresh_condition(states: Mapping[str, RemoteState], now: float) -> tuple[bool, str, str] | None:
    """(ok, reason, message) of the TrustBundlesFresh condition; None without federated remotes."""
    if not states:
        return None
    stale = {name: state for name, state in sorted(states.items()) if not state.fresh}
    if not stale:
        return True, "Fetched", "; ".join(f"{name}: {state.condition(now)[1]}" for name, state in sorted(states.items()))
    reason = "Stale" if any(state.fetched_at is not None for state in stale.values()) else "NeverFetched"
    return False, reason, "; ".join(f"{name}: {state.condition(now)[1]}" for name, state in stale.items())


# ---- serving ------------------------------------------------------------------


def bundle_app(current: Callable[[], tuple[tuple[str, ...], int]], refresh_hint: int) -> web.Application:
    """The bundle endpoint: GET BUNDLE_PATH answers the SPIFFE bundle of `current()` (PEMs, sequence).

    Public by design (a bundle holds only CA certificates); it serves nothing else.
    """

    async def handle(_: web.Request) -> web.Response:
        pems, sequence = current()
        return web.Response(body=encode_bundle(pems, sequence, refresh_hint), content_type="application/json")

    app = web.Application()
    app.router.add_get(BUNDLE_PATH, handle)
    return app
