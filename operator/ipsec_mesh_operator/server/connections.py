"""Bounds on what a client can make the operator's HTTPS servers hold (mesh API, webhooks).

aiohttp's own defaults let a connection that never sends a request stay for about an
hour, and asyncio gives each TLS connection a 256 KiB read buffer before its handshake
has even begun. Here each server accepts plain TCP and does TLS itself, so that:

- at most `max_connections` are open; beyond that a new connection evicts the one that
  has been idle (not inside a request) longest, or is refused when every one is busy,
  before any TLS state exists for it;
- the handshake must end within `handshake_timeout`, request headers then (and the next
  request after a response) within `idle_timeout` (aiohttp's keep-alive timer);
- a client that vanishes without FIN or RST is found by TCP keepalive and TCP_USER_TIMEOUT
  within `dead_client_timeout` (dead_clients.py), which ends a watch it left waiting;
- the TLS read buffer is one record's size, not 256 KiB, and one buffer serves every
  connection of a server (see _SharedBufferSSLProtocol): at 10,000 long polls per
  replica it was a third of what a waiting connection cost.

Requests themselves are bounded elsewhere: body size and time (api.read_json), open
requests per pod (OperatorRuntime.request_slot). aiohttp does not end a handler whose
client has gone (its `handler_cancellation` is off, and on it would cancel every handler
anywhere, a CA rotation or a TokenReview half done); a handler that waits for a long time
(a long poll, a stream) does so inside `ended_by_disconnect`, so that the connection's loss
ends the wait at once and frees the pod's request slot, instead of the next write failing
up to a heartbeat (60 s) later.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from asyncio import sslproto
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from .. import metrics
from .dead_clients import detect_dead_client

#: A TLS record is at most 16 KiB of plaintext plus its header and tag.
TLS_READ_BUFFER = 17 * 1024
#: Connections the kernel queues for accept(): a burst is accepted (and refused by the pool) rather than dropped.
BACKLOG = 1024
#: Seconds a closing connection may wait for the client's close_notify.
TLS_SHUTDOWN_TIMEOUT = 5.0


class _SharedBufferSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol reading ciphertext into the pool's one buffer instead of its own.

    Safe because the event loop's transport calls get_buffer(), recv_into() and
    buffer_updated() back to back, and buffer_updated() copies the bytes into the
    connection's own BIO before it returns: no other connection's read comes in between.
    """

    max_size = TLS_READ_BUFFER

    def __init__(self, *args: object, shared: memoryview, **kwargs: object):
        super().__init__(*args, **kwargs)
        self._ssl_buffer_view = shared
        self._ssl_buffer = shared.obj


class ConnectionPool:
    """The open connections of one server, at most `limit`, the idle ones in the order they became idle."""

    def __init__(self, name: str, limit: int, ssl_context: ssl.SSLContext, handshake_timeout: float,
                 dead_client_timeout: int = 0):
        self.name = name
        self.limit = limit
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        #: Seconds without an acknowledgement after which a client counts as gone (dead_clients.py); 0: off.
        self.dead_client_timeout = dead_client_timeout
        #: Makes the HTTP protocol of a new connection (the aiohttp Server, once the runner is set up).
        self.factory: Callable[[], asyncio.Protocol] | None = None
        self.open = 0
        self._idle: OrderedDict[_Connection, None] = OrderedDict()
        self._by_handler: dict[asyncio.Protocol, _Connection] = {}
        #: The ciphertext read buffer of all this server's connections (one event loop reads them in turn).
        self.read_buffer = memoryview(bytearray(TLS_READ_BUFFER))

    def admit(self, connection: _Connection) -> bool:
        if self.open >= self.limit:
            if not self._idle:
                metrics.CONNECTIONS_DROPPED.labels(self.name, "refused").inc()
                return False
            oldest = next(iter(self._idle))
            metrics.CONNECTIONS_DROPPED.labels(self.name, "evicted").inc()
            oldest.abort()
        self.open += 1
        self._idle[connection] = None
        metrics.CONNECTIONS.labels(self.name).set(self.open)
        return True

    def release(self, connection: _Connection) -> None:
        self.open -= 1
        self._idle.pop(connection, None)
        self._by_handler.pop(connection.handler, None)
        metrics.CONNECTIONS.labels(self.name).set(self.open)

    def register(self, connection: _Connection) -> None:
        self._by_handler[connection.handler] = connection

    def request_started(self, handler: object) -> _Connection | None:
        connection = self._by_handler.get(handler)
        if connection is not None:
            self._idle.pop(connection, None)
        return connection

    def request_ended(self, connection: _Connection) -> None:
        if not connection.released:
            self._idle[connection] = None  # most recently idle: evicted last

    def close_idle(self) -> None:
        for connection in list(self._idle):
            connection.abort()


class _Connection(asyncio.BufferedProtocol):
    """One accepted TCP connection: admitted by the pool, then TLS, then aiohttp's handler."""

    def __init__(self, pool: ConnectionPool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.handler: asyncio.Protocol | None = None
        self.inner: sslproto.SSLProtocol | None = None
        self.released = True  # until admitted
        self.lost = False
        #: The handler task waiting inside `ended_by_disconnect`, cancelled when the connection is lost.
        self.waiting: asyncio.Task[object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.pool.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.released = False
        if self.pool.dead_client_timeout:
            detect_dead_client(transport.get_extra_info("socket"), self.pool.dead_client_timeout)
        assert self.pool.factory is not None
        self.handler = self.pool.factory()
        self.pool.register(self)
        self.inner = _SharedBufferSSLProtocol(
            asyncio.get_running_loop(), self.handler, self.pool.ssl_context, None, server_side=True,
            ssl_handshake_timeout=self.pool.handshake_timeout, ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
            shared=self.pool.read_buffer)
        self.inner.connection_made(transport)

    def abort(self) -> None:
        """Drop at once (evicted, or the server stops): no TLS shutdown, the slot is free now."""
        self._release()
        assert self.transport is not None
        self.transport.abort()

    def _release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.release(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self.inner is not None
        return self.inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        assert self.inner is not None
        self.inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self.lost = True
        if self.inner is not None:
            self.inner.connection_lost(exc)
        if self.waiting is not None:
            self.waiting.cancel()


POOL_KEY = web.AppKey("connection_pool", ConnectionPool)
_CONNECTION_KEY = web.RequestKey("connection", _Connection)


class ClientGone(Exception):
    """The client closed its connection while its request waited inside `ended_by_disconnect`."""


@contextlib.contextmanager
def ended_by_disconnect(request: web.Request) -> Iterator[None]:
    """Inside the block, the loss of the request's connection ends the wait: ClientGone comes out.

    Only for waits whose interruption loses nothing (a long poll, a stream): the handler's
    task is cancelled where it waits, and a cancellation of ours becomes ClientGone (one from
    anyone else, a server stopping, still propagates).
    """
    connection = request.get(_CONNECTION_KEY)
    if connection is None:  # a server without a ConnectionPool: nothing follows the connection
        yield
        return
    if connection.lost:
        raise ClientGone
    task = asyncio.current_task()
    assert task is not None
    connection.waiting = task
    try:
        yield
    except asyncio.CancelledError:
        if connection.lost and task.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        connection.waiting = None


@web.middleware
async def track_requests(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """A connection inside a request is never the one evicted."""
    pool = request.app[POOL_KEY]
    connection = pool.request_started(request.protocol)
    if connection is not None:
        request[_CONNECTION_KEY] = connection
    try:
        return await handler(request)
    finally:
        if connection is not None:
            pool.request_ended(connection)


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through a ConnectionPool (see the module's docstring)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, pool: ConnectionPool):
        super().__init__(runner, host, port, ssl_context=pool.ssl_context, backlog=BACKLOG)
        self.pool = pool

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        self.pool.factory = self._runner.server
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self.pool), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        self.pool.close_idle()  # those in their handshake have no aiohttp handler that would close them


def guard(app: web.Application, pool: ConnectionPool) -> None:
    """Before the app's runner is set up: requests tell the pool which connections are busy."""
    app[POOL_KEY] = pool
    app.middlewares.append(track_requests)
