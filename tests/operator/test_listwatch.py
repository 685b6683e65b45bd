"""ListWatch and SecretWatch: list + watch of a collection or one Secret, resync after 410 Gone and
dropped connections, what vanished unseen is removed, bounded backoff."""

from __future__ import annotations

import asyncio
import json

import pytest

from ipsec_mesh_operator.controller.kube import KubeError
from ipsec_mesh_operator.controller.listwatch import BACKOFF_MAX, ListWatch, SecretWatch


def secret(version, name="ipsec-mesh-ca"):
    return {"metadata": {"name": name, "namespace": "mesh", "resourceVersion": str(version)}, "data": {"v": version}}


class ScriptedKube:
    """Answers lists and watches from a script; each watch step is a list of events or an exception."""

    def __init__(self, lists, watches):
        self.lists, self.watches = list(lists), list(watches)
        self.asked: list[tuple[str, ...]] = []

    async def get(self, path):
        self.asked.append(("list", path))
        if not self.lists:
            await asyncio.Event().wait()  # the script is over
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def watch(self, path, version, field_selector=None):
        self.asked.append(("watch", version, field_selector))
        if not self.watches:
            await asyncio.Event().wait()  # the script is over: a quiet watch
        step = self.watches.pop(0)
        for event in step if isinstance(step, list) else []:
            yield event
        if isinstance(step, Exception):
            raise step


async def run_script(kube, until):
    applied, slept = [], []

    async def apply(obj):
        applied.append(None if obj is None else obj["data"]["v"])

    async def sleep(seconds):
        slept.append(seconds)
        await asyncio.sleep(0)  # a real sleep yields to the loop too

    watch = SecretWatch(kube, "mesh", "ipsec-mesh-ca", apply, sleep=sleep)
    task = asyncio.create_task(watch.run())
    for _ in range(1000):  # bounded in count: the script is finite
        if until(applied, kube):
            break
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return watch, applied, slept


async def test_gone_and_dropped_watches_list_again_and_only_the_named_secret_counts():
    listed = {"metadata": {"resourceVersion": "10"}, "items": [secret(1, "other"), secret(1)]}
    kube = ScriptedKube(
        lists=[listed, {"metadata": {"resourceVersion": "20"}, "items": [secret(2)]},
               KubeError(503, "unavailable"), {"metadata": {"resourceVersion": "30"}, "items": [secret(3)]}],
        watches=[
            # An event for another Secret (a server that ignores the field selector), junk, then 410 Gone.
            [{"type": "MODIFIED", "object": secret(11, "db-password")}, {"type": "MODIFIED", "object": "junk"},
             {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}],
            # After the relist: a change, then the connection drops mid-stream.
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "21"}}},
             {"type": "MODIFIED", "object": secret(22)}], ConnectionResetError("peer closed"),
            [{"type": "DELETED", "object": secret(31)}],
        ])
    watch, applied, slept = await run_script(kube, lambda applied, _: len(applied) >= 5)
    # 1 (listed), 2 (listed after 410), 22 (watched), resumed from 22 then dropped: a failed list
    # (backoff), 3 (listed again), then the deletion.
    assert applied == [1, 2, 22, 3, None]
    assert watch.lists == 4 and watch.failures == 2
    watched = [entry for entry in kube.asked if entry[0] == "watch"]
    assert watched[:4] == [("watch", "10", "metadata.name=ipsec-mesh-ca"), ("watch", "20", "metadata.name=ipsec-mesh-ca"),
                           ("watch", "22", "metadata.name=ipsec-mesh-ca"), ("watch", "30", "metadata.name=ipsec-mesh-ca")]
    assert all("fieldSelector=metadata.name%3Dipsec-mesh-ca" in path for kind, path, *_ in kube.asked if kind == "list")
    # The drop after events lists again after the base backoff; the failed list right after it doubles it.
    assert slept == [0.5, 1.0]


async def test_a_server_that_refuses_every_watch_is_not_hammered():
    gone = [{"type": "ERROR", "object": {"code": 410}}]
    rounds = 40
    kube = ScriptedKube(lists=[{"metadata": {"resourceVersion": "1"}, "items": []}] * rounds,
                        watches=[gone] * rounds)
    watch, applied, slept = await run_script(kube, lambda _, kube: not kube.lists)
    # Every list after the second waits first, doubling up to the cap: no tight loop.
    assert watch.lists == rounds
    assert len(slept) >= rounds - 2 and slept[:3] == [0.5, 1.0, 2.0]
    assert max(slept) == BACKOFF_MAX and slept == sorted(slept)


async def test_the_kube_client_sends_the_field_selector_that_rbac_resource_names_require():
    """With resourceNames, the API server allows list/watch only with `fieldSelector=metadata.name=<name>`:
    the real client must send it on both, or every replica's watch is refused with 403."""
    from aiohttp import web

    from ipsec_mesh_operator.controller.kube import Connection, KubeClient

    seen = []

    async def secrets(request):
        seen.append((request.query.get("watch"), request.query.get("fieldSelector")))
        if request.query.get("watch") != "true":
            return web.json_response({"metadata": {"resourceVersion": "5"}, "items": [secret(1)]})
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"type": "MODIFIED", "object": ' + json.dumps(secret(6)).encode() + b"}\n")
        return response

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/mesh/secrets", secrets)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = KubeClient(Connection(server=f"http://127.0.0.1:{port}"))
    applied = []

    async def apply(obj):
        applied.append(None if obj is None else obj["data"]["v"])

    watch = SecretWatch(client, "mesh", "ipsec-mesh-ca", apply)
    task = asyncio.create_task(watch.run())
    try:
        for _ in range(200):  # bounded in count
            if len(applied) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await runner.cleanup()
    assert applied[:2] == [1, 6]
    assert seen[:2] == [(None, "metadata.name=ipsec-mesh-ca"), ("true", "metadata.name=ipsec-mesh-ca")]


def pod(name, version):
    return {"metadata": {"namespace": "prod", "name": name, "resourceVersion": str(version)}}


async def test_a_collection_relist_removes_what_vanished_unseen_and_failed_lists_back_off():
    kube = ScriptedKube(
        lists=[{"metadata": {"resourceVersion": "10"}, "items": [pod("a", 1), pod("b", 2)]},
               KubeError(500, "etcd"), KubeError(500, "etcd"),
               {"metadata": {"resourceVersion": "30"}, "items": [pod("b", 2), pod("c", 25)]}],
        watches=[[{"type": "DELETED", "object": pod("a", 11)}, {"type": "ADDED", "object": pod("d", 12)},
                  {"type": "MODIFIED", "object": "junk"}, {"type": "ERROR", "object": {"code": 410}}]])
    seen, slept, listed = [], [], []

    async def apply(key, obj):
        seen.append(("apply", key[1]))

    async def remove(key):
        seen.append(("remove", key[1]))

    async def sleep(seconds):
        slept.append(seconds)
        await asyncio.sleep(0)

    watch = ListWatch(kube, "pods", "/api/v1/pods", apply, remove, on_listed=lambda: listed.append(watch.lists),
                      sleep=sleep)
    task = asyncio.create_task(watch.run())
    for _ in range(1000):  # bounded in count: the script is finite
        if len(listed) >= 2:
            break
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # d was added by the watch and is gone from the relist after the 410: removed, as a is by its event.
    assert seen == [("apply", "a"), ("apply", "b"), ("remove", "a"), ("apply", "d"),
                    ("apply", "b"), ("apply", "c"), ("remove", "d")]
    assert watch.known == {("prod", "b"), ("prod", "c")}
    # The 410 after events lists again at once; the two failed lists wait 0.5 s then 1 s.
    assert slept == [0.5, 1.0] and listed == [1, 4] and watch.failures == 2
    assert all("?" not in entry[1] for entry in kube.asked if entry[0] == "list")  # no field selector
