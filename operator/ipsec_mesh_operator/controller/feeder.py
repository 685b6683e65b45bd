"""The read side of the operator: list+watch of pods, namespaces and peerings into the mesh index.

It runs on every replica, whether or not kopf peering made it the writer: kopf pauses
all of its own watches on a paused replica, so indexing through kopf would leave paused
replicas answering the mesh API and the webhooks from a stale index. The writers (status,
PSK creation and rotation, events, finalizers) stay kopf handlers, run by the elected
replica only; this side only reads, and adopts the writer's keys from their Secrets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..model.peering import GROUP, PLURAL, VERSION, InvalidPeering, parse_peering
from ..model.settings import INJECTED_ANNOTATION
from ..model.sidecar import has_injected_sidecar
from .index import PodInfo
from .listwatch import Key, ListWatch, SecretWatch
from .runtime import OperatorRuntime

logger = logging.getLogger("ipsec_mesh_operator.feeder")


class IndexFeeder:
    def __init__(self, runtime: OperatorRuntime, on_synced: Callable[[str], None] = lambda _: None):
        self.runtime = runtime
        self.on_synced = on_synced
        kinds: list[tuple[str, str, Callable[[Key, dict[str, Any]], Awaitable[None]],
                          Callable[[Key], Awaitable[None]]]] = [
            ("pods", "/api/v1/pods", self._apply_pod, self._remove_pod),
            ("peerings", f"/apis/{GROUP}/{VERSION}/{PLURAL}", self._apply_peering, self._remove_peering),
        ]
        # Watched, never written: list/watch is all the chart's ClusterRole grants (docs/services.md).
        for kind, path in (("Service", "/api/v1/services"),
                           ("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices")):
            kinds.append((path.rsplit("/", 1)[1], path, self._service_applier(kind), self._service_remover(kind)))
        if runtime.config.watch_namespaces:
            kinds.append(("namespaces", "/api/v1/namespaces", self._apply_namespace, self._remove_namespace))
        self.listings = [ListWatch(runtime.kube, name, path, apply, remove, on_listed=self._listed(name))
                         for name, path, apply, remove in kinds]
        config = runtime.config
        #: The mesh CA Secret: any replica may rotate it, every replica serves its bundle.
        self.ca_watch = SecretWatch(runtime.kube, config.namespace, config.ca_secret,
                                    runtime.adopt_ca_secret)
        self._unsynced = set(self.names)
        #: Set once every kind has been listed: the index is complete (later changes come by watch).
        self.synced = asyncio.Event()

    @property
    def names(self) -> list[str]:
        return [listing.kind for listing in self.listings]

    async def run(self) -> None:
        await asyncio.gather(*(listing.run() for listing in self.listings), self._refresh_keys(),
                             self.ca_watch.run())

    def _listed(self, name: str) -> Callable[[], None]:
        def listed() -> None:
            self._unsynced.discard(name)
            self.on_synced(name)
            if not self._unsynced:
                self.synced.set()
        return listed

    # ---- what each kind does to the index -----------------------------------

    async def _apply_pod(self, key: Key, body: dict[str, Any]) -> None:
        # The annotation alone proves nothing (a pod that never met the webhook may set it):
        # only a pod that runs the injected sidecar is in the mesh.
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if annotations.get(INJECTED_ANNOTATION) == "true" and has_injected_sidecar(
                body.get("spec") or {}, self.runtime.config):
            self.runtime.index.upsert_pod(PodInfo.from_body(body))
        elif self.runtime.index.pod(key) is not None:
            await self._remove_pod(key)

    async def _remove_pod(self, key: Key) -> None:
        self.runtime.remove_pod(key)

    async def _apply_namespace(self, key: Key, body: dict[str, Any]) -> None:
        self.runtime.index.set_namespace_labels(key[1], dict((body.get("metadata") or {}).get("labels") or {}))

    async def _remove_namespace(self, key: Key) -> None:
        self.runtime.index.remove_namespace(key[1])

    def _service_applier(self, kind: str) -> Callable[[Key, dict[str, Any]], Awaitable[None]]:
        async def apply(key: Key, body: dict[str, Any]) -> None:
            self.runtime.apply_service_event(kind, "MODIFIED", body)
        return apply

    def _service_remover(self, kind: str) -> Callable[[Key], Awaitable[None]]:
        async def remove(key: Key) -> None:
            self.runtime.apply_service_event(kind, "DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})
        return remove

    async def _apply_peering(self, key: Key, body: dict[str, Any]) -> None:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            await self._remove_peering(key)
            return
        try:
            spec = parse_peering(key[0], key[1], dict(body.get("spec") or {}))
        except InvalidPeering:
            return  # the writer reports it; the last valid version stays indexed
        self.runtime.index.upsert_peering(spec)
        await self.runtime.follow_keys(spec)

    async def _remove_peering(self, key: Key) -> None:
        self.runtime.forget_peering(key)

    async def _refresh_keys(self) -> None:
        """Keys change with time (activation, retirement) and with the writer's rotations."""
        while True:
            await asyncio.sleep(self.runtime.config.key_check_interval)
            for key in list(self.runtime.psk):
                spec = self.runtime.index.peering(key)
                if spec is not None:
                    try:
                        await self.runtime.follow_keys(spec)
                    except Exception:  # the next round retries
                        logger.exception("reading the keys of %s/%s failed", *key)
