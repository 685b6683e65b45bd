"""Follow one Secret by name (list + watch with a field selector), so every replica sees the writer's keys at once.

The mesh CA Secret changes when any replica rotates the CA; the others used to read it
only at their next key check (60 s), so with replicas a rotation reached most
watchers a minute late. The chart grants list/watch on this one Secret by name
(resourceNames), which the API server authorises only for requests carrying the
matching `metadata.name` field selector.

The watch resumes from the last resourceVersion; an ERROR event (410 Gone: that version
is too old) lists again; a failed list or a dropped connection waits a bounded,
doubling backoff first. The periodic key check stays as the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .kube import KubeError

logger = logging.getLogger("ipsec_mesh_operator.secret_watch")

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


class _Kube(Protocol):
    async def get(self, path: str) -> dict[str, Any] | None: ...

    def watch(self, path: str, resource_version: str, field_selector: str | None = None) -> Any: ...


class SecretWatch:
    """Calls `apply(secret)` with the Secret as listed or watched, `apply(None)` when it is gone."""

    def __init__(self, kube: _Kube, namespace: str, name: str,
                 apply: Callable[[dict[str, Any] | None], Awaitable[object]],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.kube, self.namespace, self.name, self.apply, self.sleep = kube, namespace, name, apply, sleep
        self.selector = f"metadata.name={name}"
        self.path = f"/api/v1/namespaces/{namespace}/secrets"
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
            except Exception as exc:  # list again after a backoff; the periodic key check is the fallback
                self.failures += 1
                problem = True
                logger.warning("watch of Secret %s/%s failed (%s), listing again", self.namespace, self.name,
                               exc if isinstance(exc, KubeError) else type(exc).__name__)
            # A watch that delivered events was healthy: its end (410 Gone, a dropped stream) lists
            # again at once. Rounds without any progress back off, doubling up to BACKOFF_MAX, so a
            # server that refuses every watch straight away is not listed in a tight loop.
            failed_in_a_row = (0 if self.events > progress else failed_in_a_row) + \
                (1 if problem or self.events == progress else 0)
            steps = failed_in_a_row if problem else failed_in_a_row - 1
            if steps > 0:
                await self.sleep(self._backoff(steps))

    @staticmethod
    def _backoff(failures: int) -> float:
        return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(failures - 1, 16))

    def _ours(self, obj: Any) -> bool:
        """Only the named Secret counts, whatever else a server without field selectors sends."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        return isinstance(meta, dict) and meta.get("name") == self.name and \
            meta.get("namespace", self.namespace) == self.namespace

    async def _list(self) -> str:
        self.lists += 1
        query = urllib.parse.urlencode({"fieldSelector": self.selector})
        listed = await self.kube.get(f"{self.path}?{query}")
        if not isinstance(listed, dict):
            raise KubeError(404, f"{self.path} is not served")
        items = listed.get("items")
        found = [item for item in items if self._ours(item)] if isinstance(items, list) else []
        await self.apply(found[0] if found else None)
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        """Apply events from `version`; returns where to resume, or "" to list again (410 Gone)."""
        async for event in self.kube.watch(self.path, version, field_selector=self.selector):
            kind, obj = event.get("type"), event.get("object")
            if kind == "ERROR":
                logger.info("watch of Secret %s/%s ended (%s); listing again", self.namespace, self.name,
                            obj.get("code") if isinstance(obj, dict) else "?")
                return ""
            if not isinstance(obj, dict):
                continue
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                self.events += 1
            elif self._ours(obj):
                self.events += 1
                await self.apply(None if kind == "DELETED" else obj)
        return version
