"""PSK Secret writes carry the resourceVersion they were decided on, as the CA Secret's do
(controller/secret_writes.py): a second writer (another replica, or this one acting on a stale
cache) never overwrites a newer key; the refused writer reads again and converges on what is
stored (kmock with the API server's optimistic concurrency)."""

from __future__ import annotations

import asyncio

from ipsec_mesh_operator import metrics
from ipsec_mesh_operator.controller.kube import Connection, KubeClient, decode_secret_data
from ipsec_mesh_operator.controller.runtime import OperatorRuntime
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.pki.psk import PskRing
from tests.support.kube_harness import first_reads_meet, replicas
from tests.support.memory_kube import MemoryKube

NAMESPACE = "prod"
SPEC = parse_peering(NAMESPACE, "p", {"selector": {}, "peers": [{"podSelector": {}}], "authentication": {
    "type": "psk", "pskRotationInterval": "2h", "pskOverlap": "1h"}})
OWNER = {"apiVersion": "ipsec-mesh.io/v1alpha1", "kind": "IPsecPeering", "name": "p", "uid": "u-1",
         "controller": True, "blockOwnerDeletion": True}
ROTATION = 2 * 3600


def runtime_at(url: str, clock) -> OperatorRuntime:
    config = OperatorConfig(namespace="mesh-system", webhook_enabled=False, key_check_interval=3600)
    return OperatorRuntime(config, KubeClient(Connection(server=url)), clock=clock)


async def stored_ring(runtime: OperatorRuntime) -> PskRing:
    return PskRing.from_secret_data(decode_secret_data(await runtime.kube.read_secret(NAMESPACE, "p-psk")))


def rotations() -> float:
    return metrics.KEY_ROTATIONS.labels("psk")._value.get()


def conflicts() -> float:
    return metrics.KEY_WRITE_CONFLICTS.labels("psk")._value.get()


async def test_two_writers_rotating_a_psk_at_once_store_one_key_and_both_serve_it():
    now = [1_900_000_000.0]
    async with replicas(lambda url: runtime_at(url, lambda: now[0])) as (_, (first, second)):
        await first.ensure_psk(SPEC, OWNER)
        await second.ensure_psk(SPEC, OWNER)  # loads the first one's Secret
        assert first.psk[SPEC.key].values == second.psk[SPEC.key].values
        now[0] += ROTATION + 1  # due for both
        first_reads_meet([first.kube, second.kube])  # a concurrent writer between our read and our write
        before, refused = rotations(), conflicts()
        await asyncio.gather(first.rotate_psk_if_due(SPEC, OWNER), second.rotate_psk_if_due(SPEC, OWNER))
        stored = await stored_ring(first)
        assert len(stored.ring.generations) == 2  # one new key stored, not one written over the other
        for runtime in (first, second):  # the refused writer re-read and adopted the winner's key
            assert runtime.psk[SPEC.key].values == stored.values and runtime.psk[SPEC.key].ring == stored.ring
        assert rotations() == before + 1 and conflicts() == refused + 1


async def test_a_writer_with_a_stale_cache_adopts_the_newer_key_instead_of_overwriting_it():
    now = [1_900_000_000.0]
    async with replicas(lambda url: runtime_at(url, lambda: now[0])) as (_, (stale, other)):
        await stale.ensure_psk(SPEC, OWNER)
        await other.ensure_psk(SPEC, OWNER)
        now[0] += ROTATION + 1
        await other.rotate_psk_if_due(SPEC, OWNER)  # `stale` does not know: it caches the Secret
        newer = await stored_ring(other)
        assert len(newer.ring.generations) == 2
        before = rotations()
        await stale.rotate_psk_if_due(SPEC, OWNER)  # due by its cache, not by what is stored
        assert (await stored_ring(stale)).values == newer.values  # not overwritten
        assert stale.psk[SPEC.key].values == newer.values  # converged on what is stored
        assert stale.index._psk_keys[SPEC.key] == newer.keys(now[0])  # and serves its keys to the sidecars
        assert rotations() == before


async def test_a_rotation_due_while_the_psk_secret_is_gone_writes_it_back_with_its_owner():
    """Before, the patch of a deleted Secret got 404 and was dropped: the new key lived in memory only."""
    now = [1_900_000_000.0]
    kube = MemoryKube()
    runtime = OperatorRuntime(OperatorConfig(webhook_enabled=False), kube, clock=lambda: now[0])
    await runtime.ensure_psk(SPEC, OWNER)
    del kube.secrets[(NAMESPACE, "p-psk")]
    now[0] += ROTATION + 1
    await runtime.rotate_psk_if_due(SPEC, OWNER)
    stored = await kube.read_secret(NAMESPACE, "p-psk")
    assert stored["metadata"]["ownerReferences"] == [OWNER]  # garbage-collected with its peering
    assert PskRing.from_secret_data(decode_secret_data(stored)).values == runtime.psk[SPEC.key].values
    assert len(runtime.psk[SPEC.key].ring.generations) == 2
