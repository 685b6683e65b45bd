"""The mesh API over HTTPS: CSR signing, peer-map long-poll, sidecar status reports.

Every call carries the pod's projected ServiceAccount token (audience bound);
the caller only ever gets or affects its own pod's certificate and map.

    POST /v1/certificates   {"csr": PEM}          -> {"certificate", "chain", "trustBundle", "notAfter"}
    GET  /v1/peermap?version=N&wait=S               -> peer map JSON, or 304 if still at version N after S s
    POST /v1/status         StatusReport JSON     -> 204
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ipsec_mesh.meshapi import MeshApiError
from ipsec_mesh.meshapi.status import StatusReport

from . import metrics
from .ca import CertificateRequestError
from .runtime import NotAllowed, NotReady, OperatorRuntime
from .tokens import Caller, Unauthenticated

logger = logging.getLogger("ipsec_mesh_operator.api")

MAX_BODY = 64 * 1024
MAX_WAIT = 60.0
RUNTIME_KEY = web.AppKey("runtime", OperatorRuntime)

Handler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, reason: str) -> web.Response:
    metrics.REQUESTS_REFUSED.labels(reason).inc()
    return web.json_response({"error": message}, status=status)


def authenticated(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME_KEY]
        try:
            caller = await runtime.authenticator.authenticate(request.headers.get("Authorization"))
            return await handler(request, caller)
        except Unauthenticated as exc:
            logger.info("mesh API: unauthenticated request from %s: %s", request.remote, exc)
            return _error(401, str(exc), "unauthenticated")
        except NotAllowed as exc:
            return _error(403, str(exc), "forbidden")
        except NotReady as exc:
            return _error(503, str(exc), "not_ready")
        except (CertificateRequestError, MeshApiError) as exc:
            return _error(400, str(exc), "bad_request")
    return wrapper


async def _json_body(request: web.Request) -> object:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise MeshApiError("request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise MeshApiError("request body too large")
    try:
        return json.loads(raw)
    except ValueError:
        raise MeshApiError("request body is not JSON") from None


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
    try:
        since = int(request.query.get("version", "0"))
        wait = min(float(request.query.get("wait", "0")), MAX_WAIT)
    except ValueError:
        raise MeshApiError("version and wait must be numbers") from None
    if since < 0 or wait < 0:
        raise MeshApiError("version and wait must not be negative")
    pod = runtime.pod_of(caller)
    current = await runtime.wait_for_peer_map(pod, since, wait)
    if current is None:
        if runtime.peer_map(pod) is None:
            raise NotReady("no peer map for this pod yet")
        return web.Response(status=304)
    return web.Response(body=current.to_json(), content_type="application/json")


@authenticated
async def report_status(request: web.Request, caller: Caller) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    report = StatusReport.from_dict(await _json_body(request))
    runtime.record_status(runtime.pod_of(caller), report)
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def make_app(runtime: OperatorRuntime) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[RUNTIME_KEY] = runtime
    app.router.add_post("/v1/certificates", sign_certificate)
    app.router.add_get("/v1/peermap", peer_map)
    app.router.add_post("/v1/status", report_status)
    app.router.add_get("/healthz", healthz)
    return app
