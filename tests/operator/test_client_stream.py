"""The sidecar's client watching peer maps: a stream where the operator streams, long polls where it does not."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ipsec_mesh_operator.server import api, watch
from tests.operator.test_peer_map_stream import move
from tests.support.standalone_fixture import client_for, running

BOUND = 20.0


async def _versions(operator, changes: int) -> list[int]:
    """The versions the web pod's client yields while db moves `changes` times, one move per map read."""
    index = operator.runtime.index
    seen = []
    async with client_for(operator, "shop", "web") as client:
        maps = client.watch_peer_maps(wait=1)
        try:
            seen.append((await asyncio.wait_for(anext(maps), BOUND)).version)
            for _ in range(changes):
                move(operator, "db")
                peer_map = await asyncio.wait_for(anext(maps), BOUND)
                assert peer_map == index.peer_map(("shop", "web"))
                seen.append(peer_map.version)
        finally:
            await maps.aclose()
    return seen


async def test_the_client_reads_many_maps_from_one_stream(tmp_path, monkeypatch):
    opened = []
    original = api.stream_peer_maps

    async def counted(*args):
        opened.append(args[2])
        return await original(*args)

    monkeypatch.setattr(api, "stream_peer_maps", counted)
    async with running(tmp_path) as operator:
        seen = await _versions(operator, 5)
        assert seen == sorted(set(seen)) and len(seen) == 6
        assert opened == [("shop", "web")]  # six maps, one request


async def test_the_client_reconnects_with_its_version_when_the_operator_ends_a_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(watch, "MAX_STREAM", 1.0)
    async with running(tmp_path) as operator:
        index = operator.runtime.index
        async with client_for(operator, "shop", "web") as client:
            maps = client.watch_peer_maps(wait=1)
            try:
                first = await asyncio.wait_for(anext(maps), BOUND)
                await asyncio.sleep(1.5)  # past the stream's end: the client is on its second stream
                move(operator, "db")
                second = await asyncio.wait_for(anext(maps), BOUND)
            finally:
                await maps.aclose()
        # The reconnection asked from `first`'s version: the same map was not handed over twice.
        assert first.version < second.version == index.version(("shop", "web"))


async def test_the_client_falls_back_to_long_polls_with_an_operator_that_does_not_stream(tmp_path, monkeypatch):
    async def long_poll_only(request, runtime, pod, since, wait):  # what an older operator answers
        document = await runtime.wait_for_peer_map_json(pod, since, wait)
        if document is None:
            return web.Response(status=304)
        return web.Response(body=document, content_type="application/json")

    monkeypatch.setattr(api, "stream_peer_maps", long_poll_only)
    async with running(tmp_path) as operator:
        seen = await _versions(operator, 5)
        assert seen == sorted(set(seen)) and len(seen) == 6
