"""Several replicas against kmock: a CA rotation by one reaches the others' mesh API at once (issue 14).

Each replica is what the operator's startup builds (runtime, IndexFeeder, HTTPS servers)
with its own client to the emulated API server. `key_check_interval` is an hour, and the
periodic reload is never started: only the watch of the CA Secret can bring the rotation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging

import pytest

from ipsec_mesh.meshapi import MeshApiClient
from ipsec_mesh_operator import metrics
from ipsec_mesh_operator.controller.feeder import IndexFeeder
from ipsec_mesh_operator.controller.kube import Connection, KubeClient
from ipsec_mesh_operator.controller.runtime import OperatorRuntime
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.server.servers import Servers
from tests.operator.test_operator_kmock import PEERINGS, PODS, peering_body, pod_body, tokenreview_setup
from tests.support import fake_tokens
from tests.support.kube_harness import running_kube

NAMESPACE = "mesh-system"
CA_SECRET = f"/api/v1/namespaces/{NAMESPACE}/secrets/ipsec-mesh-ca"
#: Only bounds a failing run (a lost rotation would otherwise wait forever); never a threshold.
BOUND = 30


@contextlib.asynccontextmanager
async def replica(url: str):
    config = OperatorConfig(namespace=NAMESPACE, api_host="127.0.0.1", api_port=0, metrics_port=0,
                            webhook_enabled=False, extra_server_names=("localhost", "127.0.0.1"),
                            key_check_interval=3600)
    runtime = OperatorRuntime(config, KubeClient(Connection(server=url)))
    await runtime.load_or_create_ca()
    servers = Servers(runtime, None)
    feeder = IndexFeeder(runtime)
    task = asyncio.create_task(feeder.run())
    try:
        await asyncio.wait_for(feeder.synced.wait(), BOUND)
        await servers.start()
        yield runtime, servers, feeder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await servers.stop()
        await runtime.kube.close()


def refused():
    return metrics.KEYS_REFUSED.labels("ca")._value.get()


@pytest.fixture
def kube():
    with running_kube(tokenreview_setup) as harness:
        harness.create(PODS, pod_body("web-0", "10.0.0.1", "web"))
        harness.create(PODS, pod_body("db-0", "10.0.0.2", "db", sa="db"))
        harness.create(PEERINGS, peering_body("web-db"))
        yield harness


async def test_a_ca_rotation_by_one_replica_reaches_the_long_polls_of_another(kube, caplog):
    async with replica(kube.url) as (writer, _, _), replica(kube.url) as (other, servers, feeder):
        assert other.ca.ring == writer.ca.ring  # the second replica loaded the first one's CA
        bundle = "".join(other.index.trust_bundle)
        token = fake_tokens.issue("prod", "web", "web-0", "uid-web-0")
        url = f"https://localhost:{servers.ports['api']}"
        async with MeshApiClient(url, ca_bundle=bundle, token=lambda: token) as client:
            first = await client.fetch_peer_map()
            assert first is not None and first.trust_bundle == other.index.trust_bundle
            waiting = asyncio.ensure_future(client.fetch_peer_map(first.version, wait=BOUND))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            assert await writer.rotate_ca_if_due(now_please=True)
            new_bundle = writer.ca.trust_bundle(writer.clock())
            assert len(new_bundle) == 2
            # The one long poll held on the other replica is woken by the rotation and carries its bundle:
            # nothing but the Secret's watch ran there (no key check in the hour the test is configured with).
            changed = await asyncio.wait_for(waiting, BOUND + 5)
            assert changed is not None and changed.version > first.version
            assert changed.trust_bundle == new_bundle
            assert other.ca.ring == writer.ca.ring
            assert feeder.ca_watch.lists == 1 and feeder.ca_watch.failures == 0

            # A malformed CA Secret (anyone who can patch it, or a botched restore) is refused: the CA in use
            # stays, the refusal is counted and logged without any key material, and the watch goes on.
            before, good_ring = refused(), other.ca.ring
            stolen = json.loads(base64.b64decode(kube.get(CA_SECRET)["data"]["state.json"]))
            some_key = next(iter(stolen["keys"].values())).splitlines()[1]
            first_id, second_id = list(stolen["certs"])
            swapped = {**stolen, "keys": {first_id: stolen["keys"][second_id], second_id: stolen["keys"][first_id]}}
            with caplog.at_level(logging.INFO, logger="ipsec_mesh_operator"):
                for state in (b"{not json", json.dumps(swapped).encode()):
                    counted = refused()
                    await asyncio.to_thread(kube.patch, CA_SECRET,
                                            {"data": {"state.json": base64.b64encode(state).decode()}})
                    for _ in range(BOUND * 20):
                        if refused() >= counted + 2:  # both replicas watch it
                            break
                        await asyncio.sleep(0.05)
            assert refused() == before + 4
            assert other.ca.ring == good_ring and writer.ca.ring == good_ring
            assert "does not match its certificate" in caplog.text and "unusable" in caplog.text
            assert some_key not in caplog.text and "PRIVATE KEY" not in caplog.text
            # The map on that replica still carries the good bundle, and a later good rotation still arrives.
            assert (await client.fetch_peer_map()).trust_bundle == new_bundle
            waiting = asyncio.ensure_future(client.fetch_peer_map(changed.version, wait=BOUND))
            await asyncio.sleep(0.2)
            assert await writer.rotate_ca_if_due(now_please=True)
            again = await asyncio.wait_for(waiting, BOUND + 5)
            assert again is not None and again.trust_bundle == writer.ca.trust_bundle(writer.clock())
            assert feeder.ca_watch.failures == 0
