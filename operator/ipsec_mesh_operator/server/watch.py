"""The streaming peer-map watch: `GET /v1/peermap?watch=1&version=N&wait=S`.

A long poll costs one HTTP request per delivered map (parsed, routed, authenticated,
answered); at 10,000 watchers that request handling was most of a CA rotation's CPU. A
stream answers once with headers and then writes each newer version of the pod's map on
the same response, so a delivered map costs one TLS write.

Framing: HTTP/1.1 chunked transfer coding carrying newline-delimited JSON
(`application/x-ndjson`). Each frame is one complete peer map (one version, compact JSON,
which never contains a raw newline) followed by `\\n`, written as one chunk in one
transport write; an empty line is a heartbeat, sent every `wait` seconds (1 to 60) so
the client can tell a silent stream from a dead one. Frames are delimited by the newline,
not by the chunk boundaries, so a proxy that re-chunks the body changes nothing.

Bounds a client cannot get around:
- the per-pod request slots and the connection pool apply as to a long poll (a stream is
  one request, held open);
- a watcher that leaves more than `STREAM_UNREAD_LIMIT` bytes unread when its next frame
  is due, or does not take a frame within `STREAM_WRITE_TIMEOUT`, is dropped and counted
  (`ipsec_mesh_peer_map_streams_dropped{reason="unread"}`); it reconnects with its version;
- authentication is rechecked as a long poll's request is (the authenticator's cache, then
  a TokenReview), at the first wake-up (frame or heartbeat) a heartbeat interval after the
  last check, so a frame is never sent on a check older than `wait` (a long poll's answer
  is as old as its request): an expired or revoked token, or a pod replaced under the same
  name, ends the stream;
- a stream ends after at most `MAX_STREAM` seconds (jittered down to half, so that streams
  opened together do not all come back together): Kubernetes' shortest projected token
  lives 10 minutes and the kubelet replaces it at 80 %, so a client reconnecting at least
  every 5 minutes presents its current token file.
"""

from __future__ import annotations

import asyncio
import logging
import random

from aiohttp import web

from .. import metrics
from ..controller.runtime import NotAllowed, NotReady, OperatorRuntime
from ..controller.token_review import Unauthenticated
from .connections import ClientGone, ended_by_disconnect

logger = logging.getLogger("ipsec_mesh_operator.api")

STREAM_TYPE = "application/x-ndjson"
MAX_STREAM = 300.0
#: Heartbeat interval bounds: a client must not make a stream wake up a thousand times a second.
MIN_HEARTBEAT = 1.0
#: Unread bytes (our TLS write buffer) a watcher may hold when its next frame is due: asyncio's
#: default high-water mark, where a long poll's writer would start waiting for the client.
STREAM_UNREAD_LIMIT = 64 * 1024
#: Seconds a frame may wait for the client to take it.
STREAM_WRITE_TIMEOUT = 30.0
HEARTBEAT = b"\n"


class _StreamResponse(web.StreamResponse):
    """Chunked; headers held until the first frame so that both leave in one TLS record."""

    _send_headers_immediately = False


class _Dropped(Exception):
    """The watcher did not read what it was sent."""


async def stream_peer_maps(request: web.Request, runtime: OperatorRuntime, pod: tuple[str, str], since: int,
                           heartbeat: float) -> web.StreamResponse:
    """Write each newer map of `pod` as one frame until a bound ends the stream (see the module)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM * random.uniform(0.5, 1.0)
    heartbeat = min(max(heartbeat, MIN_HEARTBEAT), MAX_STREAM)
    authorization = request.headers.get("Authorization")
    response = _StreamResponse(headers={"Content-Type": STREAM_TYPE, "Cache-Control": "no-store"})
    response.enable_chunked_encoding()
    await response.prepare(request)  # headers buffered: they go out with the first frame
    version, first, checked = since, True, loop.time()
    metrics.PEER_MAP_STREAMS.inc()
    try:
        with ended_by_disconnect(request):  # a dropped stream frees its slot now, not at its next write
            while (left := deadline - loop.time()) > 0:
                delivery = await runtime.next_peer_map(pod, version, 0.0 if first else min(heartbeat, left))
                if runtime.releasing_watchers:
                    break
                # Checked once a heartbeat, on whichever wake-up comes first: a long poll's answer is as old as
                # its request's check (up to `wait`), and a CA rotation's wave does not pay for 10,000 checks.
                if loop.time() - checked >= heartbeat:
                    if not await _still_allowed(runtime, authorization, pod):
                        break
                    checked = loop.time()
                if delivery is None:
                    await _send(request, response, HEARTBEAT)
                else:
                    version = delivery[0]
                    await _send(request, response, delivery[1] + b"\n")
                    # Not held while waiting: every waiting stream would keep its last map (~25 MiB at 2,500).
                    delivery = None
                first = False
        await response.write_eof()
    except _Dropped:
        metrics.PEER_MAP_STREAMS_DROPPED.labels("unread").inc()
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionResetError, ClientGone):
        pass  # the sidecar left: it reconnects with its last version
    finally:
        metrics.PEER_MAP_STREAMS.dec()
    return response


async def _still_allowed(runtime: OperatorRuntime, authorization: str | None, pod: tuple[str, str]) -> bool:
    """What a long poll's next request would be told: the same token, reviewed again when its cache entry ends."""
    try:
        caller = await runtime.authenticator.authenticate(authorization)
        return runtime.pod_of(caller) == pod
    except (Unauthenticated, NotAllowed, NotReady) as exc:
        logger.debug("peer-map stream of %s/%s ends: %s", pod[0], pod[1], exc)
        metrics.PEER_MAP_STREAMS_DROPPED.labels("unauthenticated").inc()
        return False


async def _send(request: web.Request, response: web.StreamResponse, frame: bytes) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError
    unread = transport.get_write_buffer_size()
    if unread > STREAM_UNREAD_LIMIT:
        raise _Dropped
    if not request.protocol.writing_paused and unread + len(frame) <= transport.get_write_buffer_limits()[1]:
        # Not paused, and this frame keeps it below the high-water mark: the write cannot wait for the
        # client, so no timer (a timeout context costs about a tenth of a delivered map).
        await response.write(frame)
        return
    try:
        async with asyncio.timeout(STREAM_WRITE_TIMEOUT):
            await response.write(frame)
    except TimeoutError:
        raise _Dropped from None
