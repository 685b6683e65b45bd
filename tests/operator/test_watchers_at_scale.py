"""Issue 14: the mesh API holding a long poll per pod, at CI size (bench/bench_mesh_api_watchers.py is the 10,000).

400 watchers in 2 processes against a real standalone operator process: every watcher reads a
CA rotation, only the pods whose maps a pod change touches are woken (counted by the operator),
and the connection bounds, set to just what this load needs, still refuse what goes past them.
Everything is counted, nothing timed.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from tests.support.watcher_load import WatcherLoad, open_poll, pod_name, status_of

PODS, GROUP = 400, 20
#: Connections the operator accepts: the watchers, 7 more polls of one pod and 1 spare.
LIMIT = PODS + 8
PER_POD = 8


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    with WatcherLoad(tmp_path_factory.mktemp("watchers"), PODS, GROUP, processes=2,
                     max_connections=LIMIT, max_requests_per_pod=PER_POD) as running:
        assert running.connect() == PODS
        yield running


def test_every_watcher_reads_a_ca_rotation(load):
    load.settle(PODS)
    change = load.ask("rotate-ca")
    assert change["refused"] is None
    everyone = {pod_name(i, GROUP) for i in range(PODS)}
    assert len(load.delivery(change, everyone)) == PODS
    assert change["woken"] == PODS


def test_a_pod_change_wakes_only_the_watchers_of_the_maps_it_changes(load):
    moved = pod_name(GROUP * 3 + 5, GROUP)
    load.settle(PODS)
    before = load.reads()
    change = load.ask("move-pod", moved)
    affected = {tuple(pod) for pod in change["affected_pods"]}
    assert affected == {pod_name(i, GROUP) for i in range(GROUP * 3, GROUP * 4)}  # its namespace's peering
    assert change["woken"] == GROUP
    assert len(load.delivery(change, affected)) == GROUP
    after = load.reads()
    unaffected_reads = sum(len(after[pod][0]) - len(before[pod][0]) for pod in after if pod not in affected)
    assert unaffected_reads == 0


async def test_the_bounds_refuse_past_the_limits_under_load(load):
    bundle = (load.state / "ca-bundle.pem").read_text()
    busy, other = pod_name(0, GROUP), pod_name(1, GROUP)
    load.settle(PODS)
    reads = load.reads()
    version_of = {pod: reads[pod][0][-1][0] for pod in (busy, other)}
    assert load.ask("stats")["open"] == PODS
    held = [await open_poll(load.url, bundle, load.token(busy), version_of[busy]) for _ in range(PER_POD - 1)]
    try:
        reader, writer = await open_poll(load.url, bundle, load.token(busy), version_of[busy])
        assert await status_of(reader) == 429  # the pod's 9th request
        writer.close()
        held.append(await open_poll(load.url, bundle, load.token(other), version_of[other]))
        for _ in range(100):  # until the server has taken the poll: then every connection is inside a request
            if load.ask("stats")["watching"] == LIMIT:
                break
            await asyncio.sleep(0.05)
        assert load.ask("stats")["open"] == LIMIT
        with pytest.raises((OSError, ssl.SSLError, asyncio.IncompleteReadError)):
            reader, writer = await open_poll(load.url, bundle, load.token(other), version_of[other])
            await status_of(reader)
    finally:
        for _, writer in held:
            writer.close()


async def test_the_watchers_of_one_pod_share_one_serialisation_of_a_change(monkeypatch):
    from ipsec_mesh.meshapi import PeerMap
    from ipsec_mesh_operator.controller.index import PodInfo
    from ipsec_mesh_operator.controller.runtime import OperatorRuntime
    from ipsec_mesh_operator.model.settings import OperatorConfig
    from tests.support.memory_kube import MemoryKube

    runtime = OperatorRuntime(OperatorConfig(), MemoryKube())
    web = PodInfo("prod", "web-0", "u", "default", {"app": "web"}, ("10.0.0.1",))
    runtime.index.upsert_pod(web)
    serialised = []
    original = PeerMap.to_json
    monkeypatch.setattr(PeerMap, "to_json", lambda self: serialised.append(self.version) or original(self))
    since = runtime.index.version(web.key)
    polls = [asyncio.create_task(runtime.wait_for_peer_map_json(web.key, since, 30)) for _ in range(PER_POD)]
    await asyncio.sleep(0)
    runtime.index.upsert_pod(PodInfo("prod", "web-0", "u", "default", {"app": "web"}, ("10.0.0.9",)))
    documents = await asyncio.wait_for(asyncio.gather(*polls), 10)
    assert len(serialised) == 1 and len(set(documents)) == 1 and b"10.0.0.9" in documents[0]
    assert not runtime._watchers  # nothing left behind by the answered polls
    assert await runtime.wait_for_peer_map_json(web.key, runtime.index.version(web.key), 0.01) is None
    assert not runtime._watchers  # nor by one that timed out
