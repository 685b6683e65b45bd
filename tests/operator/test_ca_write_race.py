"""Two replicas rotate the mesh CA at the same moment (no leader): the CA Secret is written with its
resourceVersion as precondition, so one write wins and the other replica adopts the winner's CA
instead of overwriting it (kmock with the API server's optimistic concurrency)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from ipsec_mesh_operator import metrics
from ipsec_mesh_operator.controller.kube import Conflict, Connection, KubeClient, decode_secret_data
from ipsec_mesh_operator.controller.runtime import OperatorRuntime
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.standalone.store import FileSecretStore
from tests.support.kube_harness import first_reads_meet, replicas, running_kube
from tests.support.memory_kube import MemoryKube

NAMESPACE = "mesh-system"
CA_SECRET = f"/api/v1/namespaces/{NAMESPACE}/secrets/ipsec-mesh-ca"
INTERVAL = 86400


def stored_generations(kube) -> list[str]:
    state = json.loads(base64.b64decode(kube.get(CA_SECRET)["data"]["state.json"]))
    return sorted(state["certs"])


def runtime_at(url: str, clock) -> OperatorRuntime:
    config = OperatorConfig(namespace=NAMESPACE, webhook_enabled=False, key_check_interval=3600,
                            ca_rotation_interval=INTERVAL, ca_propagation=600, max_cert_lifetime=3600)
    return OperatorRuntime(config, KubeClient(Connection(server=url)), clock=clock)


def rotations() -> float:
    return metrics.KEY_ROTATIONS.labels("ca")._value.get()


async def test_two_replicas_rotating_at_once_keep_one_ca_and_both_use_it():
    now = [1_900_000_000.0]
    async with replicas(lambda url: runtime_at(url, lambda: now[0])) as (kube, (first, second)):
        await first.load_or_create_ca()
        await second.load_or_create_ca()
        assert first.ca.ring == second.ca.ring and len(stored_generations(kube)) == 1
        now[0] += INTERVAL + 1  # the rotation is due for both
        first_reads_meet([first.kube, second.kube])  # both read the Secret before either writes
        before = rotations()
        results = await asyncio.gather(first.rotate_ca_if_due(), second.rotate_ca_if_due())
        generations = stored_generations(kube)
        assert len(generations) == 2  # one rotation stored, not two written over each other
        assert first.ca.ring == second.ca.ring  # the loser adopted the winner's CA: both sign with it
        assert sorted(g.id for g in first.ca.ring.generations) == generations
        assert sorted(results) == [False, True] and rotations() == before + 1


async def check_a_stale_write_is_refused(client) -> None:
    await client.create_secret(NAMESPACE, "s", {"a": b"1"})
    read = await client.read_secret(NAMESPACE, "s")
    await client.update_secret_data(NAMESPACE, "s", {"a": b"2"}, expected=read)
    with pytest.raises(Conflict):
        await client.update_secret_data(NAMESPACE, "s", {"a": b"3"}, expected=read)
    assert decode_secret_data(await client.read_secret(NAMESPACE, "s")) == {"a": b"2"}


async def test_a_write_against_a_stale_resource_version_is_refused_by_the_api_server():
    with running_kube() as kube:
        client = KubeClient(Connection(server=kube.url))
        try:
            await check_a_stale_write_is_refused(client)
        finally:
            await client.close()


async def test_the_standalone_store_keeps_the_same_precondition(tmp_path):
    await check_a_stale_write_is_refused(FileSecretStore(tmp_path))


async def test_a_rotation_due_while_the_secret_is_gone_writes_it_back():
    """Before, the patch of a deleted Secret got 404 and was dropped: the rotated CA lived in memory only."""
    config = OperatorConfig(namespace=NAMESPACE, webhook_enabled=False, ca_rotation_interval=INTERVAL,
                            ca_propagation=600, max_cert_lifetime=3600)
    now = [1_900_000_000.0]
    kube = MemoryKube()
    runtime = OperatorRuntime(config, kube, clock=lambda: now[0])
    await runtime.load_or_create_ca()
    del kube.secrets[(NAMESPACE, config.ca_secret)]
    now[0] += INTERVAL + 1
    assert await runtime.rotate_ca_if_due()
    stored = await kube.read_secret(NAMESPACE, config.ca_secret)
    assert stored is not None and not await runtime.adopt_ca_secret(stored)  # what we use is what is stored
