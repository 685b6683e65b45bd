"""Byte streams over non-blocking sockets (TLS through `ssl.SSLObject` and memory BIOs), a TCP
client connection and a TCP server, on the loop interface (helpers.get_running_loop).

Reads pull from the socket only when a read needs more than is buffered, at most READ_SIZE at
a time, so what a peer can make us buffer is the caller's bound (`limit` for lines, the count
of `readexactly`/`read`) plus one READ_SIZE. Reads and writes wait with `add_reader` /
`add_writer`; the caller bounds them in time (`timeout`).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from .helpers import get_running_loop, to_thread
from .loop import CancelledError, Future, Task, task_settled

log = logging.getLogger("ipsec_mesh.aio")

READ_SIZE = 1 << 16
DEFAULT_LIMIT = 1 << 16
#: A server's connections at a time; more are accepted and closed at once.
MAX_CONNECTIONS = 64
LISTEN_BACKLOG = 100


class IncompleteReadError(EOFError):
    """The stream ended before `expected` bytes (None: before the separator) arrived."""

    def __init__(self, partial: bytes, expected: int | None):
        super().__init__(f"{len(partial)} bytes read before the end, {expected!r} expected")
        self.partial = partial
        self.expected = expected


class LimitOverrunError(Exception):
    """No separator within the stream's limit; `consumed` bytes are buffered."""

    def __init__(self, message: str, consumed: int):
        super().__init__(message)
        self.consumed = consumed


def _wake(future: Future) -> None:
    if not future.done():
        future.set_result(None)


class Stream:
    """The reader and the writer of one connection (asyncio's StreamReader and StreamWriter in one).

    Without a socket it is a memory stream fed with `feed_data`/`feed_eof`, as asyncio's
    StreamReader is in tests.
    """

    def __init__(self, sock: socket.socket | None = None, *, limit: int = DEFAULT_LIMIT):
        self._sock = sock
        self._limit = limit
        self._buffer = bytearray()
        self._eof = False
        self._out = bytearray()
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._fed: Future | None = None  # memory stream: a read waiting for feed_data
        self._loop: Any = None  # the loop a read or write last waited on
        self.closed = False

    # -- memory streams ---------------------------------------------------------------------
    def feed_data(self, data: bytes) -> None:
        self._buffer += data
        if self._fed is not None:
            _wake(self._fed)

    def feed_eof(self) -> None:
        self._eof = True
        if self._fed is not None:
            _wake(self._fed)

    # -- reading ------------------------------------------------------------------------------
    async def read(self, n: int) -> bytes:
        """Up to `n` bytes (at least one), b"" at the end."""
        if n < 0:
            raise ValueError("read() needs a bound")
        if not self._buffer and not self._eof and n:
            await self._more()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self._eof:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise IncompleteReadError(partial, n)
            await self._more()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Up to and with `separator`; LimitOverrunError if it is not within `limit` bytes."""
        start = 0
        while True:
            found = self._buffer.find(separator, start)
            if found >= 0:
                end = found + len(separator)
                if found > self._limit:
                    raise LimitOverrunError("separator found beyond the limit", found)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > self._limit:
                raise LimitOverrunError("separator not found within the limit", len(self._buffer))
            if self._eof:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise IncompleteReadError(partial, None)
            start = max(0, len(self._buffer) - len(separator) + 1)
            await self._more()

    async def readline(self) -> bytes:
        """A line with its b"\\n", the rest at the end; ValueError past the limit (as asyncio's)."""
        try:
            return await self.readuntil(b"\n")
        except IncompleteReadError as exc:
            return exc.partial
        except LimitOverrunError as exc:
            self._buffer.clear()
            raise ValueError(str(exc)) from None

    async def _more(self) -> None:
        """Buffer at least one more byte, or mark the end."""
        if self._sock is None:
            self._fed = get_running_loop().create_future()
            try:
                await self._fed
            finally:
                self._fed = None
            return
        if self._tls is None:
            data = await self._recv()
            if data:
                self._buffer += data
            else:
                self._eof = True
            return
        while True:
            try:
                data = self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                await self._flush_tls()
                raw = await self._recv()
                if raw:
                    self._incoming.write(raw)
                else:
                    self._incoming.write_eof()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            await self._flush_tls()  # a post-handshake message may want an answer
            if data:
                self._buffer += data
            else:
                self._eof = True
            return

    async def _recv(self) -> bytes:
        if self._sock is None:  # closed under a reader (not an assert: the sidecar runs with -OO)
            raise ConnectionError("the stream is closed")
        while True:
            try:
                return self._sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                await self._ready(get_running_loop().add_reader, get_running_loop().remove_reader)

    async def _ready(self, add: Callable[..., None], remove: Callable[[Any], bool]) -> None:
        if self.closed:
            raise ConnectionAbortedError("the stream is closed")
        fd = self._sock.fileno()  # type: ignore[union-attr]
        self._loop = get_running_loop()
        future = self._loop.create_future()
        add(fd, _wake, future)
        try:
            await future
        finally:
            if not self.closed:
                remove(fd)

    # -- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._tls is None:
            self._out += data
            return
        self._tls.write(data)
        self._out += self._outgoing.read()

    async def drain(self) -> None:
        """Until everything written has left for the kernel."""
        loop = get_running_loop()
        while self._out:
            try:
                sent = self._sock.send(self._out)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                await self._ready(loop.add_writer, loop.remove_writer)
                continue
            del self._out[:sent]

    async def _flush_tls(self) -> None:
        self._out += self._outgoing.read()
        await self.drain()

    async def _handshake(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False,
                                     server_hostname=None if server_hostname is None else _ascii(server_hostname))
        while True:
            try:
                self._tls.do_handshake()
                await self._flush_tls()
                return
            except ssl.SSLWantReadError:
                await self._flush_tls()
                raw = await self._recv()
                if not raw:
                    raise ConnectionResetError("connection closed during the TLS handshake") from None
                self._incoming.write(raw)

    def get_extra_info(self, name: str) -> Any:
        if name == "peername" and self._sock is not None:
            return self._sock.getpeername()
        if name == "ssl_object":
            return self._tls
        return None

    def abort(self) -> None:
        """Close at once: no TLS goodbye, nothing more sent."""
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            # A waiting read or write must not leave a closed descriptor in the selector.
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
        self._sock.close()


def _ascii(host: str) -> str | bytes:
    """An ASCII host name as bytes: ssl and getaddrinfo encode a str with the idna codec, whose modules
    (encodings.idna, stringprep, unicodedata) every sidecar would then keep; a non-ASCII one as given."""
    return host.encode("ascii") if host.isascii() else host


async def _addresses(host: str, port: int) -> list[tuple[int, Any]]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        infos = await to_thread(socket.getaddrinfo, _ascii(host), port, 0, socket.SOCK_STREAM)
        return [(family, address) for family, _, _, _, address in infos]
    family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
    return [(family, (host, port))]


async def open_connection(host: str, port: int, *, ssl: ssl.SSLContext | None = None,
                          server_hostname: str | None = None, limit: int = DEFAULT_LIMIT) -> Stream:
    """A connected Stream (TLS handshake done when `ssl` is given); OSError if no address answers."""
    error: OSError = OSError(f"no address for {host!r}")
    for family, address in await _addresses(host, port):
        sock = socket.socket(family, socket.SOCK_STREAM)
        stream = Stream(sock, limit=limit)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, f"connect to {address[0]} port {address[1]} failed")
            if code:
                loop = get_running_loop()
                await stream._ready(loop.add_writer, loop.remove_writer)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"connect to {address[0]} port {address[1]} failed: {os.strerror(code)}")
            if ssl is not None:
                await stream._handshake(ssl, server_hostname if server_hostname is not None else host)
            return stream
        except OSError as exc:
            stream.close()
            error = exc
        except BaseException:
            stream.close()
            raise
    raise error


Handler = Callable[[Stream], Awaitable[None]]


class Server:
    """Accepts TCP connections on its sockets and runs `handler(stream)` for each in its own task,
    at most `max_connections` at a time (more are closed on accept)."""

    def __init__(self, handler: Handler, sockets: list[socket.socket], limit: int, max_connections: int):
        self.sockets = sockets
        self._handler = handler
        self._limit = limit
        self.max_connections = max_connections
        self._connections: set[Task] = set()
        self.refused = 0
        self._closed = False
        loop = get_running_loop()
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listener: socket.socket) -> None:
        loop = get_running_loop()
        for _ in range(LISTEN_BACKLOG):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: what is queued stays queued
                log.warning("accept on %s failed: %s", listener.getsockname(), exc)
                return
            if len(self._connections) >= self.max_connections:
                self.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._serve(Stream(conn, limit=self._limit)))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, stream: Stream) -> None:
        try:
            await self._handler(stream)
        except CancelledError:
            raise
        except Exception:
            log.error("connection handler failed", exc_info=True)
        finally:
            stream.close()

    def close(self) -> None:
        """Stop listening and end the connections in progress."""
        if self._closed:
            return
        self._closed = True
        loop = get_running_loop()
        for sock in self.sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        for task in list(self._connections):
            task.cancel()

    async def wait_closed(self) -> None:
        for task in list(self._connections):
            await task_settled(get_running_loop(), task)


async def start_server(handler: Handler, host: str, port: int, *, limit: int = DEFAULT_LIMIT,
                       max_connections: int = MAX_CONNECTIONS) -> Server:
    """Listen on every address `host` names (as asyncio.start_server); `handler(stream)` per connection."""
    sockets: list[socket.socket] = []
    try:
        for family, address in await _addresses(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return Server(handler, sockets, limit, max_connections)
