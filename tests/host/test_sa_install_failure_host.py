"""Issue 10, item 5: an SA the kernel refuses is reported as such, on this host's kernel.

This host has XFRM but no ESP: `add_sa` fails with the kernel's "Requested type not
found", exactly what a sidecar on a node without esp4/esp6 meets. The sidecar used to
report the CHILD_SA as installed, `ready: true` and `dataplane.errors: 0`. Now the
CHILD_SA shows as not installed with the kernel's error, the data plane counts it,
readiness drops, the CHILD_SA is deleted at the peer, and a new one is tried later
with a doubling delay. The IKE sockets are on loopback in the test's namespace; the
data plane programs a throw-away one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ipsec_mesh.agent.config import parse_agent_config
from ipsec_mesh.agent.dataplane import NullDataPlane
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.runtime import Agent
from ipsec_mesh.agent.status_server import StatusServer
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from tests.agent.test_agent_loopback import agent_document
from tests.host.test_xfrm_dataplane_host import pair  # noqa: F401  (fixture)
from tests.support.loopback import http_get, wait_for

PORT = 30000 + os.getpid() % 10000
A, B = "127.0.0.1", "127.0.0.2"


def make_agent(local: str, remote: str, dataplane, *, initiate: bool) -> Agent:
    document = agent_document(local, remote, initiate=initiate)
    document["ike"] = {"port": PORT, "nattPort": PORT + 1}
    config = parse_agent_config(document, Path("."))
    return Agent(config, dataplane, PeerSet(config.peer_map, config.ike))


def children(status: dict) -> list[dict]:
    return [child for sa in status["ike_sas"] for child in sa["children"]]


async def test_a_refused_sa_install_is_reported_deleted_at_the_peer_and_retried(pair):  # noqa: F811
    a = make_agent(A, B, XfrmDataPlane(netns=pair.a), initiate=True)
    a.install_retry_base = 0.5
    b = make_agent(B, A, NullDataPlane(), initiate=False)
    server = StatusServer(a, A, 0)
    await server.start()
    await b.start()
    await a.start()
    try:
        await wait_for(lambda: ("dataplane",) in a.metrics.failures.values)
        status = a.status()
        assert status["dataplane"]["errors"] >= 1
        assert not status["ready"]
        assert (await http_get(A, server.port, "/readyz"))[0] == 503
        for child in children(status):  # while its Delete is under way
            assert child["state"] == "not-installed" and "add_sa" in child["kernel_error"]
        failure = status["last_failures"][B]
        assert failure["reason"] == "dataplane" and "add_sa" in failure["message"]
        record = status["install_failures"][B]
        assert "add_sa" in record["error"] and record["retry_in"] > 0
        code, body = await http_get(A, server.port, "/status")
        assert code == 200 and json.loads(body)["install_failures"][B]["count"] >= 1
        # The peer installed its half and was told to delete it: it does not send into a black hole.
        await wait_for(lambda: b.metrics.child_established.values[()] >= 1)
        await wait_for(lambda: not b.dataplane.inbound and not b.dataplane.outbound)
        # And a new CHILD_SA is tried after the delay, which then doubles.
        await wait_for(lambda: a.install_failures[B]["count"] >= 2)
        assert a.install_failures[B]["retry_in"] == 2 * record["retry_in"]
        assert not a.status()["ready"]
        assert not any(c["state"] == "installed" for c in children(a.status()))
    finally:
        await a.stop()
        await b.stop()
        await server.stop()
