"""List + watch of one Kubernetes collection (or one object, by field selector): the operator's read loop.

Every replica follows pods, peerings, Services, EndpointSlices, namespaces and the mesh CA
Secret this way (feeder.py): list, apply every item and remove what vanished while we were
not watching, then watch from the listed resourceVersion. A watch that ends normally
resumes from the last version it saw; an ERROR event (410 Gone: that version is too old)
lists again; a failed list or a dropped connection lists again after a backoff.

One retry policy for all of them: a round that made progress (events arrived) lists again
at once; rounds without progress wait BACKOFF_BASE, doubling up to BACKOFF_MAX, so an API
server that refuses every list or watch is not asked in a tight loop, and a recovering one
is not asked by every replica's every collection in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .kube import KubeError

logger = logging.getLogger("ipsec_mesh_operator.listwatch")

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0

Key = tuple[str, str]


class _Kube(Protocol):
    async def get(self, path: str) -> dict[str, Any] | None: ...

    def watch(self, path: str, resource_version: str, field_selector: str | None = None) -> Any: ...


def object_key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class ListWatch:
    """Calls `apply(key, obj)` for every object listed or added/modified, `remove(key)` for every one gone.

    `name`, when given, restricts it to the object of that name (`namespace` too, for a
    namespaced path): the field selector is sent on the list and the watch (RBAC's
    resourceNames requires it), and objects of other names are ignored whatever a server
    that ignores field selectors sends.
    """

    def __init__(self, kube: _Kube, kind: str, path: str,
                 apply: Callable[[Key, dict[str, Any]], Awaitable[object]],
                 remove: Callable[[Key], Awaitable[object]], *,
                 name: str | None = None, namespace: str | None = None,
                 on_listed: Callable[[], None] = lambda: None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.kube, self.kind, self.path = kube, kind, path
        self.apply, self.remove, self.on_listed, self.sleep = apply, remove, on_listed, sleep
        self.name, self.namespace = name, namespace
        self.selector = f"metadata.name={name}" if name is not None else None
        #: What the last list and the events since showed: a relist removes what is gone.
        self.known: set[Key] = set()
        #: Lists made (the first, then one per resync), and failures met; for tests and logs.
        self.lists = 0
        self.failures = 0
        #: Events received (ours and bookmarks): a watch that delivers them is healthy.
        self.events = 0

    async def run(self) -> None:
        failed_in_a_row = 0
        while True:
            progress, problem = self.events, False
            try:
                version = await self._list()
                while version:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # list again after a backoff; what was applied stays
                self.failures += 1
                problem = True
                logger.warning("list/watch of %s failed (%s), listing again", self.kind,
                               exc if isinstance(exc, KubeError) else type(exc).__name__)
            # A watch that delivered events was healthy: its end (410 Gone, a dropped stream) lists
            # again at once. Rounds without any progress back off, doubling up to BACKOFF_MAX.
            failed_in_a_row = (0 if self.events > progress else failed_in_a_row) + \
                (1 if problem or self.events == progress else 0)
            steps = failed_in_a_row if problem else failed_in_a_row - 1
            if steps > 0:
                await self.sleep(self.backoff(steps))

    @staticmethod
    def backoff(failures: int) -> float:
        return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(failures - 1, 16))

    def _ours(self, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        if self.name is None:
            return True
        meta = obj.get("metadata")
        return isinstance(meta, dict) and meta.get("name") == self.name and \
            (self.namespace is None or meta.get("namespace", self.namespace) == self.namespace)

    async def _list(self) -> str:
        self.lists += 1
        path = self.path if self.selector is None else \
            f"{self.path}?{urllib.parse.urlencode({'fieldSelector': self.selector})}"
        listed = await self.kube.get(path)
        if not isinstance(listed, dict):
            raise KubeError(404, f"{self.path} is not served")
        items = listed.get("items")
        present = set()
        for item in items if isinstance(items, list) else []:
            if self._ours(item):
                key = object_key(item)
                present.add(key)
                await self.apply(key, item)
        for key in self.known - present:  # deleted while we were not watching
            await self.remove(key)
        self.known = present
        self.on_listed()
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        """Apply events from `version`; returns where to resume, or "" to list again (410 Gone)."""
        async for event in self.kube.watch(self.path, version, field_selector=self.selector):
            kind, obj = event.get("type"), event.get("object")
            if kind == "ERROR":
                logger.info("watch of %s ended (%s); listing again", self.kind,
                            obj.get("code") if isinstance(obj, dict) else "?")
                return ""
            if not isinstance(obj, dict):
                continue
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                self.events += 1
            elif self._ours(obj):
                self.events += 1
                key = object_key(obj)
                if kind == "DELETED":
                    self.known.discard(key)
                    await self.remove(key)
                else:
                    self.known.add(key)
                    await self.apply(key, obj)
        return version


class SecretWatch(ListWatch):
    """One Secret by name: `apply(secret)` as listed or watched, `apply(None)` once it is gone.

    The mesh CA Secret changes when any replica rotates the CA; every replica follows it so a
    rotation reaches all watchers at once, not at the next key check (which stays as the
    fallback). The chart grants list/watch on this one Secret by name (resourceNames).
    """

    def __init__(self, kube: _Kube, namespace: str, name: str,
                 apply: Callable[[dict[str, Any] | None], Awaitable[object]],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        super().__init__(kube, f"Secret {namespace}/{name}", f"/api/v1/namespaces/{namespace}/secrets",
                         lambda _key, obj: apply(obj), lambda _key: apply(None),
                         name=name, namespace=namespace, sleep=sleep)
