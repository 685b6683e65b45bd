"""The sidecar's MeshApiClient against the real HTTPS mesh API: watch, trust updates, errors."""

import asyncio

import pytest

from ipsec_mesh.meshapi import MeshApiClient, MeshApiRequestError, StatusReport
from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.model.peering import parse_peering
from tests.support import fake_tokens
from tests.support.api_fixture import running_servers

WEB = PodInfo("prod", "web-0", "uid-web", "web", {"app": "web"}, ("10.0.0.1",))
DB = PodInfo("prod", "db-0", "uid-db", "db", {"app": "db"}, ("10.0.0.2",))


async def test_watch_yields_each_new_version():
    async with running_servers([WEB, DB]) as (runtime, servers):
        url = f"https://localhost:{servers.ports['api']}"
        token = fake_tokens.issue("prod", "web", "web-0", "uid-web")
        async with MeshApiClient(url, ca_bundle="".join(runtime.index.trust_bundle), token=lambda: token) as client:
            maps = client.watch_peer_maps(wait=5)
            first = await asyncio.wait_for(maps.__anext__(), 10)
            assert first.policies == ()
            runtime.index.upsert_peering(parse_peering("prod", "p", {
                "selector": {"matchLabels": {"app": "web"}}, "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]}))
            second = await asyncio.wait_for(maps.__anext__(), 10)
            assert second.version > first.version
            assert [p.name for p in second.policies[0].peers] == ["prod/db-0"]
            await maps.aclose()
            # A newer trust bundle (CA rotation) is taken for later connections.
            client.update_trust_bundle(second.trust_bundle)
            assert (await client.fetch_peer_map()).version == second.version
            # Garbage status is refused as a bad request, never a crash.
            with pytest.raises(MeshApiRequestError) as error:
                await client._request("POST", "/v1/status", body={"appliedVersion": "x"})
            assert error.value.status == 400
            await client.post_status(StatusReport(second.version))


async def test_stopping_the_servers_answers_open_long_polls_at_once():
    async with running_servers([WEB]) as (runtime, servers):
        url = f"https://localhost:{servers.ports['api']}"
        token = fake_tokens.issue("prod", "web", "web-0", "uid-web")
        async with MeshApiClient(url, ca_bundle="".join(runtime.index.trust_bundle), token=lambda: token) as client:
            current = await client.fetch_peer_map()
            poll = asyncio.ensure_future(client.fetch_peer_map(current.version, wait=30))
            await asyncio.sleep(0.5)
            assert not poll.done()
            loop = asyncio.get_running_loop()
            began = loop.time()
            await servers.stop()
            assert await asyncio.wait_for(poll, 5) is None  # "no change": the sidecar simply asks again
            assert loop.time() - began < 5


async def test_client_refuses_a_server_it_does_not_trust_and_unknown_pods_get_503():
    async with running_servers([WEB]) as (runtime, servers):
        url = f"https://localhost:{servers.ports['api']}"
        other_ca = fake_ca_bundle()
        async with MeshApiClient(url, ca_bundle=other_ca, token=lambda: "t") as client:
            with pytest.raises(MeshApiRequestError) as error:
                await client.fetch_peer_map()
            assert error.value.status is None  # TLS failed before any HTTP
        ghost = fake_tokens.issue("prod", "web", "ghost", "uid-ghost")
        async with MeshApiClient(url, ca_bundle="".join(runtime.index.trust_bundle), token=lambda: ghost) as client:
            with pytest.raises(MeshApiRequestError) as error:
                await client.fetch_peer_map()
            assert error.value.status == 503


def test_client_needs_exactly_one_token_source():
    with pytest.raises(ValueError):
        MeshApiClient("https://x", ca_bundle=fake_ca_bundle())


def fake_ca_bundle():
    import time

    from ipsec_mesh_operator.pki.ca import CertificateAuthority

    ca = CertificateAuthority.create(time.time(), 3600, 86400)
    return ca.trust_bundle(time.time())[0]
