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
from dataclasses import dataclass
from typing import Any

from ..model.peering import GROUP, PLURAL, VERSION, InvalidPeering, parse_peering
from ..model.settings import INJECTED_ANNOTATION
from ..model.sidecar import has_injected_sidecar
from .index import PodInfo
from .kube import KubeError
from .runtime import OperatorRuntime
from .secret_watch import SecretWatch

logger = logging.getLogger("ipsec_mesh_operator.feeder")

RETRY_SECONDS = 2.0
Key = tuple[str, str]


@dataclass(frozen=True)
class Listing:
    name: str
    path: str
    apply: Callable[[Key, dict[str, Any]], Awaitable[None]]
    remove: Callable[[Key], Awaitable[None]]


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class IndexFeeder:
    def __init__(self, runtime: OperatorRuntime, on_synced: Callable[[str], None] = lambda _: None):
        self.runtime = runtime
        self.on_synced = on_synced
        self.listings = [
            Listing("pods", "/api/v1/pods", self._apply_pod, self._remove_pod),
            Listing("peerings", f"/apis/{GROUP}/{VERSION}/{PLURAL}", self._apply_peering, self._remove_peering),
        ]
        # Watched, never written: list/watch is all the chart's ClusterRole grants (docs/services.md).
        for kind, path in (("Service", "/api/v1/services"),
                           ("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices")):
            self.listings.append(Listing(path.rsplit("/", 1)[1], path, self._service_applier(kind),
                                         self._service_remover(kind)))
        if runtime.config.watch_namespaces:
            self.listings.append(Listing("namespaces", "/api/v1/namespaces", self._apply_namespace,
                                         self._remove_namespace))
        config = runtime.config
        #: The mesh CA Secret: any replica may rotate it, every replica serves its bundle.
        self.ca_watch = SecretWatch(runtime.kube, config.namespace, config.ca_secret,
                                    runtime.adopt_ca_secret)
        self._unsynced = set(self.names)
        #: Set once every kind has been listed: the index is complete (later changes come by watch).
        self.synced = asyncio.Event()

    @property
    def names(self) -> list[str]:
        return [listing.name for listing in self.listings]

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(listing) for listing in self.listings), self._refresh_keys(),
                             self.ca_watch.run())

    async def _follow(self, listing: Listing) -> None:
        known: set[Key] = set()
        while True:
            try:
                listed = await self.runtime.kube.get(listing.path)
                if listed is None:
                    raise KubeError(404, f"{listing.path} is not served")
                present = set()
                for item in listed.get("items") or []:
                    key = _key(item)
                    present.add(key)
                    await listing.apply(key, item)
                for key in known - present:  # deleted while we were not watching
                    await listing.remove(key)
                known = present
                self._unsynced.discard(listing.name)
                self.on_synced(listing.name)
                if not self._unsynced:
                    self.synced.set()
                version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                while version:
                    version = await self._watch(listing, version, known)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next list starts over; the index keeps what it has
                logger.warning("listing %s failed, retrying: %r", listing.name, exc)
            await asyncio.sleep(RETRY_SECONDS)

    async def _watch(self, listing: Listing, version: str, known: set[Key]) -> str:
        """Apply events from `version`; returns where to resume, or "" to list again (410 Gone)."""
        async for event in self.runtime.kube.watch(listing.path, version):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                logger.info("watch of %s ended: %s; listing again", listing.name, obj.get("message", obj))
                return ""
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            key = _key(obj)
            if kind == "DELETED":
                known.discard(key)
                await listing.remove(key)
            else:
                known.add(key)
                await listing.apply(key, obj)
        return version

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
