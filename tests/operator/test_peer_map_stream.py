"""Issue 14: the streaming peer-map watch (`GET /v1/peermap?watch=1`) against the standalone operator.

Behaviour: one frame per new version, in order, each one whole map and one chunk; only the
watchers of changed maps are woken. Attacks: a watcher that does not read is dropped and
counted; a token that expires ends the stream; the per-pod request bound holds for streams;
every stream ends within its lifetime bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import ssl
import time

import pytest

from ipsec_mesh.meshapi import PeerMap
from ipsec_mesh_operator import metrics
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.server import watch
from tests.operator.test_api_hostile import get, raw_request, token_of
from tests.support.standalone_fixture import running

BOUND = 20.0


class RawStream:
    """One watch request over TLS, read chunk by chunk exactly as the server framed it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes):
        self.reader, self.writer, self.head = reader, writer, head

    @property
    def status(self) -> int:
        return int(self.head.split(b" ")[1])

    async def chunk(self) -> bytes | None:
        """The next chunk's data, or None at the terminating chunk (the stream ended)."""
        size = int((await asyncio.wait_for(self.reader.readuntil(b"\r\n"), BOUND))[:-2], 16)
        if size == 0:
            await asyncio.wait_for(self.reader.readuntil(b"\r\n"), BOUND)
            return None
        data = await asyncio.wait_for(self.reader.readexactly(size + 2), BOUND)
        assert data.endswith(b"\r\n")
        return data[:-2]

    async def maps(self, count: int) -> list[PeerMap]:
        """The next `count` map frames (heartbeats skipped); each chunk must hold exactly one whole frame."""
        found = []
        while len(found) < count:
            data = await self.chunk()
            assert data is not None, "the stream ended"
            assert data.endswith(b"\n") and data.count(b"\n") == 1, data[:100]
            if data != b"\n":
                found.append(PeerMap.from_json(data[:-1]))
        return found

    def close(self) -> None:
        self.writer.transport.abort()


async def open_stream(operator, pod: str = "web", version: int = 0, wait: float | str = 30,
                      receive_buffer: int | None = None) -> RawStream:
    url = (operator.state_dir / "api-url").read_text().strip()
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cadata=(operator.state_dir / "ca-bundle.pem").read_text())
    sock = None
    if receive_buffer is not None:  # set before connect(), so that the TCP window is small from the start
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, ssl=context, server_hostname=host)
    else:
        reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
    writer.write(get(f"/v1/peermap?watch=1&version={version}&wait={wait}", token_of(operator, pod)))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    return RawStream(reader, writer, head)


def move(operator, name: str) -> int:
    """A new address for pod `name` of namespace shop; returns the number of maps it changed."""
    index = operator.runtime.index
    info = index.pod(("shop", name))
    a, b, c, d = map(int, info.ips[0].split("."))
    step = c * 250 + d + 1
    moved = dataclasses.replace(info, ips=(f"10.{a + 1 if step >= 62500 else a}.{step // 250 % 250}.{step % 250}",))
    return len(index.upsert_pod(moved))


def counter(metric, *labels: str) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


async def test_frames_arrive_in_order_one_whole_map_per_chunk(tmp_path):
    async with running(tmp_path) as operator:
        stream = await open_stream(operator)
        try:
            assert stream.status == 200
            head = stream.head.lower()
            assert b"transfer-encoding: chunked" in head and b"content-type: application/x-ndjson" in head
            index = operator.runtime.index
            [first] = await stream.maps(1)
            assert first == index.peer_map(("shop", "web"))
            seen = [first.version]
            for round_number in range(30):  # bursts of changes: a frame may skip versions, never mix them
                for _ in range(1 + round_number % 4):
                    move(operator, "db")
                target = index.version(("shop", "web"))
                while seen[-1] < target:
                    [peer_map] = await stream.maps(1)
                    seen.append(peer_map.version)
                    assert peer_map == index.peer_map(("shop", "web")) or peer_map.version < target
            assert seen == sorted(set(seen)) and seen[-1] == index.version(("shop", "web"))
        finally:
            stream.close()


async def test_a_change_wakes_only_the_streams_of_the_maps_it_changed(tmp_path):
    async with running(tmp_path) as operator:
        web, cache = await open_stream(operator, "web"), await open_stream(operator, "cache")
        try:
            await web.maps(1)
            await cache.maps(1)
            for _ in range(100):  # both streams waiting again
                if len(operator.runtime._watchers) == 2:
                    break
                await asyncio.sleep(0.02)
            before = counter(metrics.PEER_MAP_WATCHERS_WOKEN)
            assert move(operator, "db") == 2  # db's and web's maps; cache's map does not list db
            [peer_map] = await web.maps(1)
            assert peer_map.version == operator.runtime.index.version(("shop", "web"))
            assert counter(metrics.PEER_MAP_WATCHERS_WOKEN) - before == 1  # web only: nobody watches db here
            assert ("shop", "cache") in operator.runtime._watchers  # still waiting, never woken
        finally:
            web.close()
            cache.close()


@pytest.mark.parametrize("bound", ["unread bytes", "write timeout"])
async def test_a_watcher_that_does_not_read_is_dropped_and_counted_not_buffered(tmp_path, monkeypatch, bound):
    if bound == "write timeout":  # the unread-bytes check out of the way: the frame that does not leave ends it
        monkeypatch.setattr(watch, "STREAM_UNREAD_LIMIT", 1 << 40)
        monkeypatch.setattr(watch, "STREAM_WRITE_TIMEOUT", 0.5)
    async with running(tmp_path) as operator:
        dropped = counter(metrics.PEER_MAP_STREAMS_DROPPED, "unread")
        stream = await open_stream(operator, receive_buffer=4096)  # and never read again
        try:
            runtime = operator.runtime
            for _ in range(20_000):  # each change is one more frame for the stream
                move(operator, "db")
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                if counter(metrics.PEER_MAP_STREAMS_DROPPED, "unread") > dropped:
                    break
            for _ in range(200):  # a write waiting for the client ends at its timeout
                if counter(metrics.PEER_MAP_STREAMS_DROPPED, "unread") > dropped:
                    break
                await asyncio.sleep(0.05)
            assert counter(metrics.PEER_MAP_STREAMS_DROPPED, "unread") == dropped + 1
            pool = operator.servers.pools["api"]
            for _ in range(100):  # the abort's connection_lost comes a loop iteration later
                if ("shop", "web") not in runtime.requests_in_flight and pool.open == 0:
                    break
                await asyncio.sleep(0.02)
            assert ("shop", "web") not in runtime.requests_in_flight  # its request slot is free again
            assert pool.open == 0  # and its connection gone
        finally:
            stream.close()


async def test_a_stream_ends_when_its_token_expires(tmp_path):
    async with running(tmp_path) as operator:
        refused = counter(metrics.PEER_MAP_STREAMS_DROPPED, "unauthenticated")
        stream = await open_stream(operator, wait=1)
        try:
            await stream.maps(1)
            assert await stream.chunk() == b"\n"  # a heartbeat: authenticated, still streaming
            lifetime = operator.token_lifetime
            # The token's expiry has passed, and the authenticator's cached review of it too.
            operator.authority._clock = lambda: time.time() + lifetime + 1
            monotonic = operator.runtime.authenticator._clock
            operator.runtime.authenticator._clock = lambda: monotonic() + 3600
            chunks = [await stream.chunk()]
            if chunks[0] is not None:  # at most one heartbeat already on its way, then the end
                chunks.append(await stream.chunk())
            assert chunks[-1] is None and set(chunks[:-1]) <= {b"\n"}, chunks
            assert counter(metrics.PEER_MAP_STREAMS_DROPPED, "unauthenticated") == refused + 1
            status, body = await raw_request(operator, get("/v1/peermap?watch=1&version=0", token_of(operator)))
            assert status == 401, body
        finally:
            stream.close()


@pytest.mark.parametrize("wait", ["1", "0", "0.001"])
async def test_every_stream_ends_within_its_lifetime_bound_and_heartbeats_at_most_once_a_second(
        tmp_path, monkeypatch, wait):
    monkeypatch.setattr(watch, "MAX_STREAM", 2.0)
    async with running(tmp_path) as operator:
        stream = await open_stream(operator, wait=wait)
        try:
            heartbeats = 0
            while (data := await stream.chunk()) is not None:
                heartbeats += data == b"\n"
                assert heartbeats <= 3  # MAX_STREAM / MIN_HEARTBEAT + the first
            for _ in range(100):  # the handler returns (and frees its slot) after the last chunk left
                if ("shop", "web") not in operator.runtime.requests_in_flight:
                    break
                await asyncio.sleep(0.02)
            assert ("shop", "web") not in operator.runtime.requests_in_flight
        finally:
            stream.close()


async def test_streams_count_against_the_per_pod_request_bound(tmp_path):
    base = OperatorConfig(key_check_interval=3600, max_requests_per_pod=2)
    async with running(tmp_path, base=base) as operator:
        streams = [await open_stream(operator) for _ in range(2)]
        try:
            assert [s.status for s in streams] == [200, 200]
            third = await open_stream(operator)
            third.close()
            assert third.status == 429
            status, _ = await raw_request(operator, get("/v1/peermap?version=0&wait=0", token_of(operator, "db")))
            assert status == 200  # another pod is not affected
        finally:
            for stream in streams:
                stream.close()


async def test_watch_takes_only_0_or_1(tmp_path):
    async with running(tmp_path) as operator:
        for value in ("2", "true", "", "1%20", "%31%31"):
            status, body = await raw_request(operator, get(f"/v1/peermap?watch={value}&version=0", token_of(operator)))
            assert status == 400 and "watch" in json.loads(body)["error"]


async def test_an_operator_that_stops_ends_its_streams_cleanly(tmp_path):
    async with running(tmp_path) as operator:
        stream = await open_stream(operator, wait=30)
        await stream.maps(1)
    try:  # the fixture's stop returned (within its own bound): the stream got its terminating chunk
        assert await stream.chunk() is None
    finally:
        stream.close()


async def _open_long_poll(operator, version: int, held: int) -> asyncio.StreamWriter:
    """A long poll (wait 60 s) whose request the operator is holding: the pod's `held`-th open slot."""
    url = (operator.state_dir / "api-url").read_text().strip()
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cadata=(operator.state_dir / "ca-bundle.pem").read_text())
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    writer.write(get(f"/v1/peermap?version={version}&wait=60", token_of(operator)))
    for _ in range(1000):  # count-bounded: until the operator's handler holds its slot
        if operator.runtime.requests_in_flight.get(("shop", "web"), 0) >= held:
            return writer
        await asyncio.sleep(0.01)
    raise AssertionError("the long poll never took a slot")


@pytest.mark.parametrize("kind", ["stream", "long poll"])
async def test_dropped_watches_free_their_slots_at_once_not_at_the_next_heartbeat(tmp_path, kind):
    """A pod that opens its whole quota of 60 s watches and drops them, round after round, is
    served again right after each round: a dead connection holds no slot until its next write."""
    limit = 3
    base = OperatorConfig(key_check_interval=3600, max_requests_per_pod=limit)
    streams_before = counter(metrics.PEER_MAP_STREAMS)
    async with running(tmp_path, base=base) as operator:
        version = operator.runtime.index.version(("shop", "web"))
        for _ in range(4):
            if kind == "stream":
                streams = [await open_stream(operator, version=version, wait=60) for _ in range(limit)]
                assert [s.status for s in streams] == [200] * limit
                for stream in streams:
                    stream.close()
            else:
                polls = [await _open_long_poll(operator, version, held) for held in range(1, limit + 1)]
                for writer in polls:
                    writer.transport.abort()
            # Right after the drops (no heartbeat, no timer in between): a new watch is accepted.
            again = await open_stream(operator, version=version, wait=60)
            again.close()
            assert again.status == 200, again.head
        for _ in range(100):  # the last one's connection_lost comes a loop iteration after its abort
            if not operator.runtime.requests_in_flight and not operator.runtime._watchers:
                break
            await asyncio.sleep(0.01)
        assert operator.runtime.requests_in_flight == {} and operator.runtime._watchers == {}
        assert counter(metrics.PEER_MAP_STREAMS) == streams_before  # no handler left for a dead connection
