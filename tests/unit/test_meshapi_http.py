"""The mesh API's small HTTPS/1.1 client: its response parser against hostile input, and real TLS on loopback."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh import aio
from ipsec_mesh.meshapi.errors import MeshApiRequestError
from ipsec_mesh.meshapi.http import (
    MAX_HEADERS,
    MAX_LINE,
    Endpoint,
    HttpProtocolError,
    Response,
    https_request,
    read_response,
)
from tests.support.pki import MeshPki

MAX_BODY = 1000


def feed(data: bytes) -> aio.Stream:
    reader = aio.Stream(limit=MAX_LINE)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def parse(data: bytes, head: bool = False) -> Response:
    return await read_response(feed(data), max_body=MAX_BODY, head=head)


async def refused(data: bytes, match: str) -> HttpProtocolError:
    with pytest.raises(HttpProtocolError, match=match) as error:
        await parse(data)
    return error.value


# --- well-formed answers ---

async def test_content_length_body_and_headers():
    response = await parse(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
                           b"X-A: 1\r\nx-a:  2 \r\n\r\n{\"a\":1}trailing junk is never read")
    assert response.status == 200 and response.body == b'{"a":1}'
    assert response.headers["content-type"] == "application/json" and response.headers["x-a"] == "1, 2"


async def test_chunked_body_with_extensions_and_trailers():
    response = await parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"4;name=value\r\nabcd\r\nA \r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert response.body == b"abcd0123456789"


async def test_body_up_to_the_end_of_the_connection():
    assert (await parse(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * MAX_BODY)).body == b"x" * MAX_BODY
    assert (await parse(b"HTTP/1.1 200 OK\r\n\r\n")).body == b""


async def test_no_body_for_304_204_and_head_and_interim_answers_are_skipped():
    assert await parse(b"HTTP/1.1 304 Not Modified\r\n\r\nignored") == Response(304, {}, b"")
    assert (await parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")).body == b""
    assert (await parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head=True)).body == b""
    response = await parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
                           b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert (response.status, response.body) == (201, b"ok")


# --- hostile answers ---

@pytest.mark.parametrize("data", [
    b"", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n",
])
async def test_truncated_answers(data):
    await refused(data, "connection closed")


async def test_truncated_content_length_body():
    error = await refused(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "after 5 of 10 body bytes")
    assert error.status == 200


@pytest.mark.parametrize("line", [
    b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 099 x", b"HTTP/1.1 200\x00",
    b"http/1.1 200 OK", b"HTTP/1.1  200 OK", b"ICY 200 OK", b"\xff\xfe", b"HTTP/1.1 200 OK\rX",
])
async def test_bad_status_lines(line):
    await refused(line + b"\r\n\r\n", "bad status line")


async def test_oversize_lines():
    await refused(b"HTTP/1.1 200 " + b"x" * MAX_LINE + b"\r\n\r\n", "longer than")
    await refused(b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_LINE + b"\r\n\r\n", "longer than")
    await refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1" + b";" * MAX_LINE + b"\r\n", "longer")


async def test_too_many_headers_trailers_and_interim_answers():
    many = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    await refused(b"HTTP/1.1 200 OK\r\n" + many + b"\r\n", f"more than {MAX_HEADERS} header")
    assert (await parse(b"HTTP/1.1 200 OK\r\n" + many[:-len(b"X-64: v\r\n")] + b"\r\n")).status == 200
    await refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + many + b"\r\n", "trailer")
    await refused(b"HTTP/1.1 100 Continue\r\n\r\n" * 5 + b"HTTP/1.1 200 OK\r\n\r\n", "interim")
    await refused(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "protocol switch")


@pytest.mark.parametrize("header", [
    b"No-Colon", b"Space Before: x", b"Name : x", b" folded: x", b"\tfolded", b": empty name",
    b"X: bell\x07", b"X: nul\x00", b"X: del\x7f", b"\xc3\xa9: x",
])
async def test_malformed_header_lines(header):
    await refused(b"HTTP/1.1 200 OK\r\nA: b\r\n" + header + b"\r\n\r\n", "header")


@pytest.mark.parametrize("value", [b"-1", b"+5", b"1e3", b"0x10", b" ", b"5, 6", b"\xd9\xa3", b"9" * 19])
async def test_bad_content_length(value):
    await refused(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n", "Content-Length")


async def test_repeated_identical_content_length_is_tolerated_differing_is_not():
    assert (await parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")).body == b"ok"
    await refused(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Content-Length")


async def test_oversize_bodies_are_refused_with_the_status():
    error = await refused(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), "too large")
    assert error.status == 200
    await refused(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_BODY + 1), "too large")
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY // 2 + 1, b"x" * (MAX_BODY // 2 + 1))
    await refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n", "too large")
    await refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n", "too large")


@pytest.mark.parametrize("size_line", [b"", b"zz", b"-1", b"0x10", b"+5", b" 5", b"1" * 17, b"5 x", b"\xef\xbc\x95"])
async def test_bad_chunk_sizes(size_line):
    await refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n0\r\n\r\n",
                  "chunk size")


async def test_chunk_data_must_end_with_crlf_and_only_chunked_transfer_coding_is_accepted():
    await refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n", "CRLF")
    await refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "Transfer-Encoding")
    await refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n0\r\n\r\n", "both")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\n"
                                                  b"Transfer-Encoding: chunked\r\n\r\n"]))
def test_any_bytes_give_a_response_or_a_typed_error(data, prefix):
    try:
        response = aio.run(parse(prefix + data))  # the sidecar's own loop
    except MeshApiRequestError:
        return
    assert len(response.body) <= MAX_BODY and 100 <= response.status <= 999


# --- the request side ---

def test_endpoint_parsing_and_request_targets():
    endpoint = Endpoint.parse("https://[::1]:8443/api/")
    assert (endpoint.host, endpoint.port, endpoint.authority) == ("::1", 8443, "[::1]:8443")
    assert endpoint.target("/v1/peermap", {"version": "3", "wait": "a b&c=d/é"}) == \
        "/api/v1/peermap?version=3&wait=a%20b%26c%3Dd%2F%C3%A9"
    assert Endpoint.parse("https://Mesh.Example:443").authority == "mesh.example"
    assert Endpoint.parse("https://10.0.0.1").target("/x y") == "/x%20y"
    for bad in ("http://x", "x", "https://", "https://u:p@x", "https://x?q=1", "https://a b", "https://x:99999"):
        with pytest.raises(ValueError):
            Endpoint.parse(bad)


# --- over TLS on loopback ---

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    pki = MeshPki()
    directory = tmp_path_factory.mktemp("tls")
    files = {}
    for name, leaf in {"named": pki.issue("api", dns=["localhost"]),
                       "ip": pki.issue("api", ips=["127.0.0.1"])}.items():
        (directory / f"{name}.crt").write_bytes(leaf.cert_pem())
        (directory / f"{name}.key").write_bytes(leaf.key_pem())
        files[name] = (directory / f"{name}.crt", directory / f"{name}.key")
    return pki, files


def client_context(pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.root.cert_pem().decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Server:
    """A TLS server on 127.0.0.1 that records each request's head and sends a canned answer."""

    def __init__(self, cert_files, answer: bytes, stall: bool = False):
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(*cert_files)
        self.answer, self.stall, self.requests = answer, stall, []

    async def handle(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2]).get(b"Content-Length", 0))
            self.requests.append(head + await reader.readexactly(length))
            if self.stall:
                await asyncio.sleep(30)
            writer.write(self.answer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


async def test_request_over_tls_verifies_the_ip_address_and_sends_a_closed_request(pki):
    authority, files = pki
    async with Server(files["ip"], b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok") as server:
        endpoint = Endpoint.parse(f"https://127.0.0.1:{server.port}")
        response = await https_request(endpoint, "POST", endpoint.target("/v1/x", {"a": "b c"}),
                                       {"Authorization": "Bearer t"}, b'{"k": 1}', client_context(authority),
                                       max_body=MAX_BODY, timeout=10)
        assert (response.status, response.body) == (200, b"ok")
        assert server.requests == [(f"POST /v1/x?a=b%20c HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                                    "Authorization: Bearer t\r\nConnection: close\r\nContent-Length: 8\r\n\r\n"
                                    '{"k": 1}').encode()]


@pytest.mark.parametrize("chunked", [False, True])
async def test_large_bodies_arrive_whole_past_the_line_limit(pki, chunked):
    authority, files = pki
    body = bytes(range(256)) * 1200  # 300 kB: many times the reader's buffer limit
    if chunked:
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:100], body[100:])) + b"0\r\n\r\n"
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async with Server(files["ip"], answer) as server:
        endpoint = Endpoint.parse(f"https://127.0.0.1:{server.port}")
        response = await https_request(endpoint, "GET", "/", {}, None, client_context(authority),
                                       max_body=len(body), timeout=10)
        assert response.body == body


async def test_a_certificate_for_another_name_or_ca_is_refused_before_sending_anything(pki):
    authority, files = pki
    async with Server(files["named"], b"HTTP/1.1 200 OK\r\n\r\n") as server:
        by_ip = Endpoint.parse(f"https://127.0.0.1:{server.port}")  # the certificate names localhost only
        with pytest.raises(MeshApiRequestError, match="connection failed") as error:
            await https_request(by_ip, "GET", "/", {}, None, client_context(authority), max_body=10, timeout=10)
        assert error.value.status is None
        by_name = Endpoint.parse(f"https://localhost:{server.port}")
        assert (await https_request(by_name, "GET", "/", {}, None, client_context(authority),
                                    max_body=10, timeout=10)).status == 200
        with pytest.raises(MeshApiRequestError, match="connection failed"):
            await https_request(by_name, "GET", "/", {}, None, client_context(MeshPki()), max_body=10, timeout=10)
        assert len(server.requests) == 1


async def test_the_whole_exchange_is_bounded_by_the_timeout(pki):
    authority, files = pki
    async with Server(files["ip"], b"", stall=True) as server:
        endpoint = Endpoint.parse(f"https://127.0.0.1:{server.port}")
        began = time.monotonic()
        with pytest.raises(MeshApiRequestError, match="within 0.5 s"):
            await https_request(endpoint, "GET", "/", {}, None, client_context(authority), max_body=10, timeout=0.5)
        assert time.monotonic() - began < 3


async def test_headers_that_would_split_the_request_are_never_sent(pki):
    authority, _ = pki
    endpoint = Endpoint.parse("https://127.0.0.1:1")
    with pytest.raises(MeshApiRequestError, match="Authorization"):
        await https_request(endpoint, "GET", "/", {"Authorization": "Bearer t\r\nX-Evil: 1"}, None,
                            client_context(authority), max_body=10, timeout=5)
