"""The sidecar's client of the operator's mesh API (HTTPS, token-authenticated).

    async with MeshApiClient(url, token_file=..., ca_bundle=pem) as api:
        issued = await api.sign_csr(csr_pem)
        async for peer_map in api.watch_peer_maps():
            ...
        await api.post_status(report)

The private key never leaves the pod: only the CSR is sent. The token is
re-read from its file for every request (kubelet rotates projected tokens).
"""

from __future__ import annotations

import contextlib
import functools
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from .. import aio
from ..records import record
from . import fields
from .errors import MeshApiRequestError, PeerMapError
from .http import Endpoint, FrameReader, Response, https_request, https_stream
from .model import MAX_DOCUMENT_BYTES, PeerMap
from .retry import Backoff, log, retry
from .status import StatusReport

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_WAIT = 30.0
MAX_RESPONSE = MAX_DOCUMENT_BYTES


@record(frozen=True)
class IssuedCertificate:
    certificate: str
    chain: tuple[str, ...]
    trust_bundle: tuple[str, ...]
    not_after: int


class MeshApiClient:
    """One HTTPS connection per request (`http.https_request`); nothing is held between calls."""

    def __init__(
        self,
        base_url: str,
        *,
        ca_bundle: str,
        token: Callable[[], str] | None = None,
        token_file: str | Path | None = None,
        request_timeout: float = 10.0,
    ):
        if (token is None) == (token_file is None):
            raise ValueError("give exactly one of token or token_file")
        self.base_url = base_url.rstrip("/")
        self._endpoint = Endpoint.parse(self.base_url)
        if token is None:
            path = str(token_file)

            def token() -> str:  # read at every request: the kubelet rotates the file
                with open(path) as file:
                    return file.read().strip()
        self._token = token
        self._request_timeout = request_timeout
        self._ssl = self._context(ca_bundle)

    @staticmethod
    def _context(ca_bundle: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=ca_bundle)  # verifies the chain and the host name (or IP)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def update_trust_bundle(self, pems: tuple[str, ...]) -> None:
        """Trust the CAs of a newer peer map (CA rotation) for later connections."""
        if pems:
            self._ssl = self._context("".join(pems))

    async def __aenter__(self) -> MeshApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to release: every request closes its own connection. Kept for the context manager."""

    def _headers(self) -> dict[str, str]:
        try:
            token = self._token()
        except OSError as exc:
            raise MeshApiRequestError(f"cannot read the ServiceAccount token: {exc.strerror}") from None
        return {"Authorization": f"Bearer {token}", "Accept": "application/json",
                "User-Agent": "ipsec-mesh-sidecar"}

    async def _request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                       timeout: float | None = None) -> tuple[int, bytes]:
        headers = self._headers()
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = await https_request(
                self._endpoint, method, self._endpoint.target(path, params), headers, payload, self._ssl,
                max_body=MAX_RESPONSE, timeout=timeout or self._request_timeout)
        except MeshApiRequestError as exc:
            raise MeshApiRequestError(f"{method} {path}: {exc}", exc.status) from None
        _check(method, path, response)
        return response.status, response.body

    async def sign_csr(self, csr_pem: bytes) -> IssuedCertificate:
        _, raw = await self._request("POST", "/v1/certificates", body={"csr": csr_pem.decode()})
        try:
            doc = fields.obj(json.loads(raw), "", {"certificate", "chain", "trustBundle", "notAfter"})
            return IssuedCertificate(
                certificate=fields.pem_certificate(doc["certificate"], "certificate"),
                chain=fields.array(doc["chain"], "chain", fields.pem_certificate, 4),
                trust_bundle=fields.array(doc["trustBundle"], "trustBundle", fields.pem_certificate, 16, 1),
                not_after=fields.integer(doc["notAfter"], "notAfter", 0, 2**63 - 1),
            )
        except (ValueError, PeerMapError) as exc:
            raise MeshApiRequestError(f"bad certificate response: {exc}") from None

    async def fetch_peer_map(self, since_version: int = 0, wait: float = 0.0) -> PeerMap | None:
        """The pod's peer map if newer than `since_version` (waiting up to `wait` s), else None."""
        status, body = await self._request(
            "GET", "/v1/peermap", params={"version": str(since_version), "wait": str(wait)},
            timeout=wait + self._request_timeout,
        )
        if status == 304:
            return None
        return PeerMap.from_json(body)

    async def watch_peer_maps(self, since_version: int = 0, wait: float = DEFAULT_WAIT, *,
                              on_error: Callable[[MeshApiRequestError], None] | None = None
                              ) -> AsyncIterator[PeerMap]:
        """Yield each newer peer map, forever; transient errors back off (`retry`), refusals and bad maps raise.

        A streaming watch: one connection, one frame per new version, a heartbeat every `wait`
        seconds; the operator ends a stream after a few minutes and it is opened again with the
        last version. An operator that does not stream answers the same request as a long poll.
        """
        version, backoff = since_version, Backoff()
        while True:
            failed = None
            async with contextlib.AsyncExitStack() as stack:
                answer, frames = await retry(functools.partial(self._open_watch, stack, version, wait),
                                             "peer-map watch", backoff=backoff, on_error=on_error)
                backoff.reset()
                documents = _long_poll(answer) if frames is None else _frames(frames, wait + self._request_timeout)
                try:
                    async for document in documents:
                        peer_map = PeerMap.from_json(document)
                        if peer_map.version > version:
                            version = peer_map.version
                            yield peer_map
                except MeshApiRequestError as exc:
                    failed = exc
            if failed is not None:  # the stream broke: like a failed request, after a pause
                delay = backoff.next()
                if on_error is not None:
                    on_error(failed)
                log.warning("peer-map watch stream broke, reconnecting in %.1fs: %s", delay, failed)
                await aio.sleep(delay)

    async def _open_watch(self, stack: contextlib.AsyncExitStack, version: int, wait: float
                          ) -> tuple[Response, FrameReader | None]:
        params = {"watch": "1", "version": str(version), "wait": str(wait)}
        try:
            answer, frames = await stack.enter_async_context(https_stream(
                self._endpoint, self._endpoint.target("/v1/peermap", params), self._headers(), self._ssl,
                max_body=MAX_RESPONSE, timeout=wait + self._request_timeout))
        except MeshApiRequestError as exc:
            raise MeshApiRequestError(f"GET /v1/peermap: {exc}", exc.status) from None
        _check("GET", "/v1/peermap", answer)
        return answer, frames

    async def post_status(self, report: StatusReport) -> None:
        await self._request("POST", "/v1/status", body=report.to_dict())


def _check(method: str, path: str, response: Response) -> None:
    if response.status >= 400 or (300 <= response.status < 400 and response.status != 304):
        # The mesh API never redirects: a 3xx is refused, not followed.
        raise MeshApiRequestError(f"{method} {path}: HTTP {response.status}: {_error_text(response.body)}",
                                  response.status)


async def _frames(frames: FrameReader, timeout: float) -> AsyncIterator[bytes]:
    """The maps of a stream until its clean end; heartbeats (empty frames) only prove it alive."""
    while (frame := await frames.next(timeout)) is not None:
        if frame:
            yield frame


async def _long_poll(answer: Response) -> AsyncIterator[bytes]:
    """An operator that does not stream answered as a long poll: a map, or 304 (nothing newer)."""
    if answer.status != 304:
        yield answer.body


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))[:500]
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
