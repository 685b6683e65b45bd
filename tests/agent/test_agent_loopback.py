"""Two real sidecar agents over loopback UDP (no data plane): IKE, status endpoint, shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import pytest

from ipsec_mesh.agent.config import parse_agent_config
from ipsec_mesh.agent.dataplane import NullDataPlane
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.runtime import Agent
from ipsec_mesh.agent.status_server import MAX_CONNECTIONS, StatusServer, text
from tests.support.loopback import http_get, wait_for

PSK = base64.b64encode(b"k" * 32).decode()
PORT = 20000 + os.getpid() % 10000


def agent_document(local: str, remote: str, *, initiate: bool) -> dict:
    return {
        "peerMap": {
            "local": {"identity": f"{local.replace('.', '-')}.default.pod.mesh.test", "addresses": [local]},
            "peerings": [{
                "name": "demo",
                "authentication": "psk",
                "psk": [{"id": "k1", "value": PSK}],
                "peers": [{"name": "other", "addresses": [f"{remote}/32"],
                           "identities": [f"{remote.replace('.', '-')}.default.pod.mesh.test"]}],
            }],
        },
        "dataplane": "none",
        "initiate": [remote] if initiate else [],
        "ike": {"port": PORT, "nattPort": PORT + 1},
        "status": {"listen": f"{local}:0"},
    }


def make_agent(local: str, remote: str, initiate: bool) -> Agent:
    config = parse_agent_config(agent_document(local, remote, initiate=initiate), Path("."))
    return Agent(config, NullDataPlane(), PeerSet(config.peer_map, config.ike))


async def test_two_agents_establish_and_report_status():
    a = make_agent("127.0.0.1", "127.0.0.2", initiate=True)
    b = make_agent("127.0.0.2", "127.0.0.1", initiate=False)
    status_a = StatusServer(a, "127.0.0.1", 0)
    await status_a.start()
    await b.start()
    await a.start()
    try:
        await wait_for(lambda: a.dataplane.outbound and b.dataplane.outbound)
        assert set(a.dataplane.outbound) == set(b.dataplane.inbound)
        assert set(b.dataplane.outbound) == set(a.dataplane.inbound)
        code, body = await http_get("127.0.0.1", status_a.port, "/status")
        status = json.loads(body)
        assert code == 200 and status["ready"] and status["ike_sas"][0]["state"] == "established"
        assert status["ike_sas"][0]["children"][0]["mode"] == "transport"
        assert "k" * 8 not in body.decode() and PSK not in body.decode()  # no key material
        code, metrics = await http_get("127.0.0.1", status_a.port, "/metrics")
        assert code == 200 and b"ipsec_mesh_ike_sa_established_total 1.0" in metrics
        assert (await http_get("127.0.0.1", status_a.port, "/readyz"))[0] == 200
        assert (await http_get("127.0.0.1", status_a.port, "/nope"))[0] == 404
    finally:
        await a.stop()
        await wait_for(lambda: not b.dataplane.inbound, 5)  # a's delete reached b
        await b.stop()
        await status_a.stop()


async def test_status_server_refuses_garbage():
    a = make_agent("127.0.0.1", "127.0.0.2", initiate=False)
    server = StatusServer(a, "127.0.0.1", 0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x00\xff garbage\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data.startswith(b"HTTP/1.0 400")
        writer.close()
    finally:
        await server.stop()


async def test_status_server_holds_a_bounded_number_of_connections():
    """Silent connections (each may hold a line's 5 s timeout) stop at MAX_CONNECTIONS: one more is
    closed at once, and a connection freed makes room again."""
    server = StatusServer(None, "127.0.0.1", 0, routes={"/healthz": lambda: text(200, "ok\n")})
    await server.start()
    silent = []
    try:
        for _ in range(MAX_CONNECTIONS):
            silent.append(await asyncio.open_connection("127.0.0.1", server.port))
        await wait_for(lambda: len(server.server._connections) == MAX_CONNECTIONS)  # all accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(4096), 10) == b""  # closed unanswered
        writer.close()
        assert server.server.refused == 1
        silent.pop()[1].close()
        await wait_for(lambda: len(server.server._connections) < MAX_CONNECTIONS)
        code, body = await http_get("127.0.0.1", server.port, "/healthz")
        assert (code, body) == (200, b"ok\n")
    finally:
        for _, writer in silent:
            writer.close()
        await server.stop()


def test_config_errors_name_the_field():
    doc = agent_document("127.0.0.1", "127.0.0.2", initiate=False)
    doc["dataplane"] = "quantum"
    with pytest.raises(Exception, match="dataplane"):
        parse_agent_config(doc, Path("."))
    doc = agent_document("127.0.0.1", "127.0.0.2", initiate=False)
    doc["bogus"] = 1
    with pytest.raises(Exception, match="bogus"):
        parse_agent_config(doc, Path("."))


def test_per_source_dos_thresholds_reach_the_endpoint():
    doc = agent_document("127.0.0.1", "127.0.0.2", initiate=False)
    doc["ike"].update(cookieThresholdPerSource=40, halfOpenLimitPerSource=60)
    config = parse_agent_config(doc, Path("."))
    agent = Agent(config, NullDataPlane(), PeerSet(config.peer_map, config.ike))
    assert agent.endpoint.cookie_threshold_per_source == 40
    assert agent.endpoint.half_open_limit_per_source == 60
    doc["ike"]["halfOpenLimitPerSource"] = 0
    with pytest.raises(Exception, match="halfOpenLimitPerSource"):
        parse_agent_config(doc, Path("."))


def test_a_peering_the_sidecar_cannot_serve_is_refused_at_start():
    from ipsec_mesh.agent.peers import CredentialError, PeerSet

    doc = agent_document("127.0.0.1", "127.0.0.2", initiate=False)
    peering = doc["peerMap"]["peerings"][0]
    del peering["psk"]
    peering["authentication"] = "certificate"
    config = parse_agent_config(doc, Path("."))
    with pytest.raises(CredentialError, match="peering demo uses certificates"):
        PeerSet(config.peer_map, config.ike)  # no certificate given


class KeepingDataPlane(NullDataPlane):
    """Stands for a kernel data plane whose SAs outlive the process."""

    def __init__(self):
        super().__init__()
        self.handed_over = False

    def hand_over(self) -> None:
        self.handed_over = True


@pytest.mark.parametrize("keeps", [True, False], ids=["kernel-sas-stay", "no-kernel"])
async def test_a_hand_over_stop_tells_no_one_when_the_sas_stay(keeps):
    """SIGTERM (a restart): with SAs that outlive us, no Delete and nothing removed; without
    a kernel data plane there is nothing to keep, and the peer hears that we are going."""
    a = make_agent("127.0.0.1", "127.0.0.2", initiate=True)
    if keeps:
        a.dataplane = KeepingDataPlane()
    b = make_agent("127.0.0.2", "127.0.0.1", initiate=False)
    await b.start()
    await a.start()
    try:
        await wait_for(lambda: a.dataplane.outbound and b.dataplane.outbound)
        await a.stop(hand_over=True)
        await asyncio.sleep(0.3)
        assert bool(b.endpoint.status()) is keeps  # the peer's IKE SA stays only without a Delete
        if keeps:
            assert a.dataplane.handed_over and a.dataplane.outbound  # nothing removed
    finally:
        await b.stop()
