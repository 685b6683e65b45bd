"""Issue 10: connections a client opens and then neglects are closed; their number is capped.

Against the standalone operator's mesh API (the same servers as in a cluster), with short
timeouts so that the tests run fast; the bounds are counted, not timed.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from ipsec_mesh.meshapi import MeshApiRequestError
from ipsec_mesh_operator.model.settings import OperatorConfig
from tests.operator.test_api_hostile import current_version, get, raw_request, token_of
from tests.support.standalone_fixture import client_for, running

SHORT = OperatorConfig(key_check_interval=3600, handshake_timeout=0.5, idle_timeout=0.5)


def address(operator) -> tuple[str, int]:
    host, port = (operator.state_dir / "api-url").read_text().strip().removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def tls(operator) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=(operator.state_dir / "ca-bundle.pem").read_text())


async def closed_by_server(reader: asyncio.StreamReader, bound: float = 30) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), bound) == b""
    except (ConnectionError, ssl.SSLError):
        return True


async def test_a_connection_that_never_starts_tls_is_closed(tmp_path):
    async with running(tmp_path, base=SHORT) as operator:
        reader, writer = await asyncio.open_connection(*address(operator))
        assert await closed_by_server(reader)
        writer.close()


async def test_a_tls_connection_that_sends_no_request_is_closed(tmp_path):
    async with running(tmp_path, base=SHORT) as operator:
        reader, writer = await asyncio.open_connection(*address(operator), ssl=tls(operator))
        assert await closed_by_server(reader)
        writer.close()


async def test_headers_sent_a_byte_at_a_time_do_not_keep_a_connection(tmp_path):
    async with running(tmp_path, base=SHORT) as operator:
        reader, writer = await asyncio.open_connection(*address(operator), ssl=tls(operator))
        request = b"GET /healthz HTTP/1.1\r\nHost: mesh\r\n" + b"X-Slow: " + b"a" * 400
        sent = 0
        for byte in request:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except (ConnectionError, ssl.SSLError):
                break
            if reader.at_eof():
                break
            sent += 1
            await asyncio.sleep(0.05)
        assert sent < len(request), "the server kept reading headers sent at 20 bytes/s"
        writer.close()


async def test_the_cap_evicts_the_longest_idle_and_a_sidecar_still_gets_in(tmp_path):
    config = OperatorConfig(key_check_interval=3600, max_connections=16, handshake_timeout=60, idle_timeout=60)
    async with running(tmp_path, base=config) as operator:
        idle = [await asyncio.open_connection(*address(operator)) for _ in range(40)]
        await asyncio.sleep(0.2)
        pool = operator.servers.pools["api"]
        assert pool.open <= 16
        closed = sum([await closed_by_server(reader, 5) for reader, _ in idle[:24]])
        assert closed == 24  # the oldest went first
        async with client_for(operator, "shop", "web") as client:
            assert (await client.fetch_peer_map()).local.identity.startswith("web.")
        for _, writer in idle:
            writer.close()


async def test_when_every_slot_is_inside_a_request_a_new_connection_is_refused(tmp_path):
    config = OperatorConfig(key_check_interval=3600, max_connections=3, handshake_timeout=60, idle_timeout=60)
    async with running(tmp_path, base=config) as operator:
        token, version = token_of(operator), current_version(operator)
        polls = [asyncio.ensure_future(raw_request(operator, get(f"/v1/peermap?version={version}&wait=3", token)))
                 for _ in range(3)]
        while operator.runtime.requests_in_flight.get(("shop", "web"), 0) < 3:
            await asyncio.sleep(0.05)
        async with client_for(operator, "shop", "db") as client:
            with pytest.raises((MeshApiRequestError, ConnectionError, ssl.SSLError, OSError)):
                await client.fetch_peer_map()
        assert [status for status, _ in await asyncio.gather(*polls)] == [304, 304, 304]
        async with client_for(operator, "shop", "db") as client:
            assert (await client.fetch_peer_map()).local.identity.startswith("db.")
