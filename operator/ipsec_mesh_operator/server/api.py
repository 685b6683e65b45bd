"""The mesh API over HTTPS: CSR signing, peer-map long-poll, sidecar status reports.

Every call carries the pod's projected ServiceAccount token (audience bound);
the caller only ever gets or affects its own pod's certificate and map.

    POST /v1/certificates   {"csr": PEM}          -> {"certificate", "chain", "trustBundle", "notAfter"}
    GET  /v1/peermap?version=N&wait=S               -> peer map JSON, or 304 if still at version N after S s
    GET  /v1/peermap?watch=1&version=N&wait=S       -> a stream of newer maps, one per line (see watch.py)
    POST /v1/status         StatusReport JSON     -> 204
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from ipsec_mesh.meshapi import MeshApiError
from ipsec_mesh.meshapi.status import StatusReport

from .. import metrics
from ..controller.runtime import NotAllowed, NotReady, OperatorRuntime, TooManyRequests
from ..controller.token_review import Caller, Unauthenticated
from ..pki.ca import CertificateRequestError
from .connections import ClientGone, ended_by_disconnect
from .ratelog import RateLimitedLog
from .watch import stream_peer_maps

logger = logging.getLogger("ipsec_mesh_operator.api")
#: Lines about what clients did wrong: a client must not be able to fill the disk.
client_log = RateLimitedLog(logger)

MAX_BODY = 64 * 1024
MAX_WAIT = 60.0
#: Seconds a client has to send a request body once its headers are in.
BODY_TIMEOUT = 10.0
# ASCII digits only (int() and float() also take "nan", "1e400", " 1", "1_0", Arabic digits...);
# the lengths keep both finite. A wait has a fraction because the sidecar sends str(float).
VERSION_PATTERN = re.compile(r"[0-9]{1,18}")
WAIT_PATTERN = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,17})?")
RUNTIME_KEY = web.AppKey("runtime", OperatorRuntime)

Handler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]


class _OneWrite(web.StreamResponse):
    """Headers held until the body is written, then both in one transport write: one TLS record and
    one send() per delivered map instead of two (aiohttp's own Response holds them the same way)."""

    _send_headers_immediately = False


def _error(status: int, message: str, reason: str) -> web.Response:
    metrics.REQUESTS_REFUSED.labels(reason).inc()
    return web.json_response({"error": message}, status=status)


def authenticated(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME_KEY]
        try:
            caller = await runtime.authenticator.authenticate(request.headers.get("Authorization"))
            with runtime.request_slot(caller):
                return await handler(request, caller)
        except Unauthenticated as exc:
            client_log.log(logging.INFO, "unauthenticated", "mesh API: unauthenticated request from %s: %s",
                           request.remote, exc)
            return _error(401, str(exc), "unauthenticated")
        except NotAllowed as exc:
            return _error(403, str(exc), "forbidden")
        except TooManyRequests as exc:
            client_log.log(logging.INFO, "too_many", "mesh API: %s", exc)
            return _error(429, str(exc), "too_many_requests")
        except NotReady as exc:
            return _error(503, str(exc), "not_ready")
        except (CertificateRequestError, MeshApiError) as exc:
            client_log.log(logging.INFO, "bad_request", "mesh API: bad request from %s: %s", request.remote, exc)
            return _error(400, str(exc), "bad_request")
    return wrapper


async def read_json(request: web.Request, limit: int) -> object:
    """The request's JSON body, at most `limit` bytes, in BODY_TIMEOUT; MeshApiError for anything else."""
    if request.content_length is not None and request.content_length > limit:
        raise MeshApiError("request body too large")
    try:
        raw = await asyncio.wait_for(request.content.read(limit + 1), BODY_TIMEOUT)
    except TimeoutError:
        raise MeshApiError(f"request body not received within {BODY_TIMEOUT:g} s") from None
    if len(raw) > limit:
        raise MeshApiError("request body too large")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise MeshApiError("request body is not JSON (or nested too deeply)") from None


async def _json_body(request: web.Request) -> object:
    return await read_json(request, MAX_BODY)


def _query_number(request: web.Request, name: str, pattern: re.Pattern[str]) -> str:
    text = request.query.get(name, "0")
    if not pattern.fullmatch(text):
        raise MeshApiError(f"{name} must be a plain decimal number")
    return text


@web.middleware
async def contain_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """A bug must not cost a traceback per request: one rate-limited line and a bare 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        client_log.log(logging.ERROR, "internal", "%s %s failed: %s", request.method, request.path,
                       type(exc).__name__)
        return _error(500, "internal error", "internal")


@authenticated
async def sign_certificate(request: web.Request, caller: Caller) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("csr"), str) or set(body) != {"csr"}:
        raise MeshApiError('expected {"csr": "<PEM>"}')
    issued = runtime.sign(caller, body["csr"].encode())
    logger.info("issued certificate for %s/%s until %d", caller.namespace, caller.pod, issued.not_after)
    return web.json_response({
        "certificate": issued.certificate,
        "chain": list(issued.chain),
        "trustBundle": list(issued.trust_bundle),
        "notAfter": issued.not_after,
    })


@authenticated
async def peer_map(request: web.Request, caller: Caller) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    since = int(_query_number(request, "version", VERSION_PATTERN))
    wait = min(float(_query_number(request, "wait", WAIT_PATTERN)), MAX_WAIT)
    pod = runtime.pod_of(caller)
    watch = request.query.get("watch", "0")
    if watch not in ("0", "1"):
        raise MeshApiError("watch must be 0 or 1")
    if watch == "1":
        if runtime.peer_map(pod) is None:
            raise NotReady("no peer map for this pod yet")
        return await stream_peer_maps(request, runtime, pod, since, wait)
    try:
        with ended_by_disconnect(request):  # a dropped long poll frees its slot now, not when `wait` ends
            document = await runtime.wait_for_peer_map_json(pod, since, wait)
    except ClientGone:
        return web.Response(status=204)  # nobody reads it: aiohttp's write fails quietly
    if document is None:
        if runtime.peer_map(pod) is None:
            raise NotReady("no peer map for this pod yet")
        return web.Response(status=304)
    # Written, not returned as a Response body: aiohttp's connection loop keeps the last response
    # until the next request ends, which for a long poll would hold every connection's last map.
    response = _OneWrite(headers={"Content-Type": "application/json"})
    response.content_length = len(document)
    try:
        await response.prepare(request)
        await response.write(document)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the sidecar left: it asks again with its last version
    return response


@authenticated
async def report_status(request: web.Request, caller: Caller) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    report = StatusReport.from_dict(await _json_body(request))
    runtime.record_status(runtime.pod_of(caller), report)
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def make_app(runtime: OperatorRuntime) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[contain_errors])
    app[RUNTIME_KEY] = runtime
    app.router.add_post("/v1/certificates", sign_certificate)
    app.router.add_get("/v1/peermap", peer_map)
    app.router.add_post("/v1/status", report_status)
    app.router.add_get("/healthz", healthz)
    return app
