"""A small HTTPS/1.1 client for the mesh API: one request per connection.

The sidecar asks the operator for little, and rarely (a CSR, a long poll every
~30 s, a status report every 30 s), so a connection per request costs nothing
that matters, while a general HTTP client library costs megabytes of memory in
every pod. Everything the server sends is bounded: the status line and header
lines, the number of headers, the body (Content-Length, chunked, or up to EOF).
Any malformed or oversize answer raises `MeshApiRequestError`. A streamed answer
(`https_stream`: the peer-map watch) is read frame by frame, each frame bounded.

    response = await https_request(endpoint, "GET", "/v1/peermap?version=3", {...}, None,
                                   context, max_body=65536, timeout=40.0)
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote, urlencode, urlsplit

from .. import aio
from ..records import record
from .errors import MeshApiRequestError

MAX_LINE = 8192          # status line, header line, chunk-size line
MAX_HEADERS = 64         # per header block (and per trailer block)
MAX_INTERIM = 4          # 1xx answers skipped before the final one
NO_BODY_STATUSES = frozenset({204, 304})
#: The media type of a streamed answer: one JSON text per line (the peer-map watch).
STREAM_TYPE = "application/x-ndjson"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_FIELD_VALUE_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9]{2})(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_TARGET_SAFE = "/-._~!$&'()*+,;=:@%"


class HttpProtocolError(MeshApiRequestError):
    """The server's answer is not well-formed HTTP/1.1 within our bounds."""


@record(frozen=True)
class Endpoint:
    """Where the mesh API lives: an https:// base URL split for connecting."""

    host: str          # name or IP literal, without IPv6 brackets
    port: int
    authority: str     # the Host header
    path_prefix: str   # percent-encoded, no trailing slash

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Split an https:// URL; ValueError if it is anything else."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{url!r} is not an https:// URL")
        if parts.username is not None or parts.query or parts.fragment:
            raise ValueError(f"{url!r}: credentials, query and fragment are not allowed in the API URL")
        port = parts.port or 443  # ValueError itself if out of range
        host = parts.hostname
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                raise ValueError(f"{url!r}: bad host name") from None
            literal = None
        shown = f"[{host}]" if literal is not None and literal.version == 6 else host
        authority = shown if port == 443 else f"{shown}:{port}"
        return cls(host, port, authority, quote(parts.path.rstrip("/"), safe=_TARGET_SAFE))

    def target(self, path: str, params: dict[str, str] | None = None) -> str:
        """The request target for `path` under the prefix, with percent-encoded query parameters."""
        target = self.path_prefix + quote(path, safe=_TARGET_SAFE)
        if params:
            target += "?" + urlencode(params, quote_via=quote, safe="")
        return target


@record(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes


def _request_bytes(endpoint: Endpoint, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
    fields = {"Host": endpoint.authority, **headers, "Connection": "close"}
    if body is not None:
        fields["Content-Length"] = str(len(body))
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in fields.items():
        if not _TOKEN.fullmatch(name.encode()) or _FIELD_VALUE_FORBIDDEN.search(value.encode()):
            raise MeshApiRequestError(f"refusing to send header {name!r}: bad characters")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def https_request(endpoint: Endpoint, method: str, target: str, headers: dict[str, str],
                        body: bytes | None, context: ssl.SSLContext, *, max_body: int,
                        timeout: float) -> Response:
    """Send one request on a fresh TLS connection; the whole exchange is bounded by `timeout`.

    Connection failures, TLS failures, timeouts and malformed answers all raise
    MeshApiRequestError (status None unless the status line was read).
    """
    request = _request_bytes(endpoint, method, target, headers, body)
    stream = None
    try:
        with _typed_failures(timeout):
            async with aio.timeout(timeout):
                stream = await _send(endpoint, request, context)
                return await read_response(stream, max_body=max_body, head=method == "HEAD")
    finally:
        if stream is not None:
            stream.abort()  # the answer is complete (or abandoned): no TLS goodbye to wait for


@contextlib.asynccontextmanager
async def https_stream(endpoint: Endpoint, target: str, headers: dict[str, str], context: ssl.SSLContext, *,
                       max_body: int, timeout: float) -> AsyncIterator[tuple[Response, FrameReader | None]]:
    """GET `target` and, if the answer is a stream (200, chunked `application/x-ndjson`), hand over its
    frames; any other answer is read whole as `https_request` would and comes with None.

    The headers (and a whole answer) must arrive within `timeout`; each frame's wait is the caller's
    (`FrameReader.next`). The connection is dropped when the block ends.
    """
    request = _request_bytes(endpoint, "GET", target, headers, None)
    stream = None
    try:
        with _typed_failures(timeout):
            async with aio.timeout(timeout):
                stream = await _send(endpoint, request, context)
                status, fields = await _read_head(stream)
                streamed = (status == 200 and fields.get("transfer-encoding", "").strip().lower() == "chunked"
                            and fields.get("content-type", "").split(";")[0].strip().lower() == STREAM_TYPE)
                answer = Response(status, fields, b"") if streamed else await _read_rest(stream, status, fields,
                                                                                            max_body)
        yield answer, FrameReader(stream, max_body) if streamed else None
    finally:
        if stream is not None:
            stream.abort()


async def _send(endpoint: Endpoint, request: bytes, context: ssl.SSLContext) -> aio.Stream:
    stream = await aio.open_connection(endpoint.host, endpoint.port, ssl=context, server_hostname=endpoint.host,
                                       limit=MAX_LINE)
    try:
        stream.write(request)
        await stream.drain()
    except BaseException:
        stream.abort()
        raise
    return stream


@contextlib.contextmanager
def _typed_failures(timeout: float) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise MeshApiRequestError(f"no complete answer within {timeout:g} s") from None
    except (OSError, EOFError, ValueError) as exc:  # SSLError, ConnectionError; UnicodeError from IDNA
        raise MeshApiRequestError(f"connection failed: {exc!r}") from None


async def read_response(reader: aio.Stream, *, max_body: int, head: bool = False) -> Response:
    """Read one response (skipping interim 1xx answers) from a stream that closes after it."""
    status, headers = await _read_head(reader)
    if head:
        return Response(status, headers, b"")
    return await _read_rest(reader, status, headers, max_body)


async def _read_head(reader: aio.Stream) -> tuple[int, dict[str, str]]:
    for _ in range(MAX_INTERIM + 1):
        status = await _read_status_line(reader)
        headers = await _read_fields(reader, "header")
        if not 100 <= status < 200:
            return status, headers
        if status == 101:
            raise HttpProtocolError("unexpected protocol switch (101)", status)
    raise HttpProtocolError("too many interim (1xx) answers")


async def _read_rest(reader: aio.Stream, status: int, headers: dict[str, str], max_body: int) -> Response:
    if status in NO_BODY_STATUSES:
        return Response(status, headers, b"")
    try:
        body = await _read_body(reader, headers, max_body)
    except HttpProtocolError as exc:
        raise HttpProtocolError(str(exc), status) from None
    return Response(status, headers, body)


class FrameReader:
    """The frames of a streamed answer: newline-terminated lines of a chunked body, each at most
    `max_frame` bytes. Lines, not chunks, delimit frames (a proxy may re-chunk); an empty line is a
    heartbeat and is returned as b"". Malformed chunking, an oversize frame, or a stream that ends
    inside a frame raise HttpProtocolError; `next()` returns None at the body's clean end."""

    def __init__(self, reader: aio.Stream, max_frame: int):
        self._reader = reader
        self._max_frame = max_frame
        self._pending = bytearray()  # received, not yet a whole frame
        self._chunk_left = 0         # bytes of the current chunk not read yet
        self._ended = False

    async def next(self, timeout: float) -> bytes | None:
        """The next frame within `timeout` seconds; MeshApiRequestError for anything but a frame or the end."""
        with _typed_failures(timeout):
            async with aio.timeout(timeout):
                return await self._next()

    async def _next(self) -> bytes | None:
        while True:
            end = self._pending.find(b"\n")
            if end >= 0:
                frame = bytes(self._pending[:end])
                del self._pending[:end + 1]
                return frame
            if len(self._pending) > self._max_frame:
                raise HttpProtocolError(f"stream frame larger than {self._max_frame} bytes")
            if self._ended:
                if self._pending:
                    raise HttpProtocolError("stream ended inside a frame")
                return None
            await self._read_some()

    async def _read_some(self) -> None:
        if self._chunk_left == 0:
            size = await _chunk_size(self._reader)
            if size == 0:
                await _read_fields(self._reader, "trailer")
                self._ended = True
                return
            self._chunk_left = size
        # At most what the frame bound still allows (+1 to see it overrun), and never past the chunk.
        want = min(self._chunk_left, self._max_frame + 1 - len(self._pending), 1 << 16)
        data = await self._reader.read(max(want, 1))
        if not data:
            raise HttpProtocolError("connection closed inside a chunk")
        self._pending += data
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await _read_exactly(self._reader, 2) != b"\r\n":
            raise HttpProtocolError("chunk data not followed by CRLF")


async def _read_line(reader: aio.Stream, what: str) -> bytes:
    """One CRLF-terminated line of at most MAX_LINE bytes, without the CRLF."""
    try:
        line = await reader.readuntil(b"\r\n")
    except aio.IncompleteReadError:
        raise HttpProtocolError(f"connection closed inside the {what}") from None
    except aio.LimitOverrunError:
        raise HttpProtocolError(f"{what} line longer than {MAX_LINE} bytes") from None
    if len(line) > MAX_LINE:
        raise HttpProtocolError(f"{what} line longer than {MAX_LINE} bytes")
    return line[:-2]


async def _read_status_line(reader: aio.Stream) -> int:
    line = await _read_line(reader, "status line")
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise HttpProtocolError(f"bad status line {line[:80]!r}")
    return int(match.group(2))


async def _read_fields(reader: aio.Stream, what: str) -> dict[str, str]:
    """A header (or trailer) block up to its empty line; names lower-cased."""
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _read_line(reader, what)
        if not line:
            return fields
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding
            raise HttpProtocolError(f"bad {what} line {line[:80]!r}")
        value = value.strip(b" \t")
        if _FIELD_VALUE_FORBIDDEN.search(value):
            raise HttpProtocolError(f"control characters in {what} {name[:80]!r}")
        key, text = name.decode("ascii").lower(), value.decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    raise HttpProtocolError(f"more than {MAX_HEADERS} {what} fields")


def _content_length(headers: dict[str, str]) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return None
    values = {value.strip() for value in raw.split(",")}  # repeated identical values are tolerated
    if len(values) != 1 or not (value := values.pop()).isascii() or not value.isdigit() or len(value) > 18:
        raise HttpProtocolError(f"bad Content-Length {raw[:80]!r}")
    return int(value)


async def _read_body(reader: aio.Stream, headers: dict[str, str], max_body: int) -> bytes:
    length = _content_length(headers)
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if length is not None:
            raise HttpProtocolError("both Transfer-Encoding and Content-Length")
        if coding.strip().lower() != "chunked":
            raise HttpProtocolError(f"unsupported Transfer-Encoding {coding[:80]!r}")
        return await _read_chunked(reader, max_body)
    if length is not None:
        if length > max_body:
            raise HttpProtocolError(f"response too large ({length} bytes)")
        return await _read_exactly(reader, length)
    body = await reader.read(max_body + 1)  # delimited by the end of the connection
    while body and len(body) <= max_body and (more := await reader.read(max_body + 1 - len(body))):
        body += more
    if len(body) > max_body:
        raise HttpProtocolError("response too large")
    return body


async def _read_exactly(reader: aio.Stream, count: int) -> bytes:
    try:
        return await reader.readexactly(count)
    except aio.IncompleteReadError as exc:
        raise HttpProtocolError(f"connection closed after {len(exc.partial)} of {count} body bytes") from None


async def _read_chunked(reader: aio.Stream, max_body: int) -> bytes:
    body = bytearray()
    while True:
        size = await _chunk_size(reader)
        if size == 0:
            await _read_fields(reader, "trailer")
            return bytes(body)
        if len(body) + size > max_body:
            raise HttpProtocolError("response too large")
        body += await _read_exactly(reader, size)
        if await _read_exactly(reader, 2) != b"\r\n":
            raise HttpProtocolError("chunk data not followed by CRLF")


async def _chunk_size(reader: aio.Stream) -> int:
    line = await _read_line(reader, "chunk size")
    match = _CHUNK_SIZE.fullmatch(line)
    if match is None:
        raise HttpProtocolError(f"bad chunk size line {line[:80]!r}")
    return int(match.group(1), 16)
