"""`ipsec-mesh-sidecar mesh`: the sidecar fed by the operator's mesh API.

    health server (not ready) -> first peer map -> key + CSR -> certificate -> PeerSet
    -> Agent.start (policies before sockets) -> ready
    then, concurrently: peer-map watch, certificate renewal at 2/3 of its lifetime,
    status reports every `status_interval` and shortly after each change, each followed by a
    trim of the C heap (at most once per interval: agent/heap.py).

A peer map the sidecar cannot use is logged and reported on its peerings; the one in
force stays. Mesh API trouble after start never stops the data plane.
"""

from __future__ import annotations

import contextlib
import logging
import time

from .. import aio
from ..meshapi.errors import MeshApiError, MeshApiRequestError
from ..meshapi.model import PeerMap
from ..meshapi.retry import MAX_DELAY, Backoff, retry
from ..meshapi.status import PeeringStatus, StatusReport
from .bootstrap import (
    EXIT_CONFIG,
    EXIT_CRASHED,
    BootstrapError,
    issue_credential,
    localized,
    peer_set,
    with_backoff,
)
from .heap import HeapTrim
from .mesh_settings import MeshSettings
from .peers import PeerSetError
from .runtime import Agent, StopSignals
from .status_report import refusal_error, status_report
from .status_server import StatusServer, agent_routes, json_response, readiness, text

log = logging.getLogger("ipsec_mesh.agent")

REPORT_GAP = 0.5  # seconds: a burst of changes makes one report, not one per change
POD_NETWORK_ROUTES = ("/healthz", "/ready", "/readyz", "/metrics")


class MeshSidecar:
    def __init__(self, settings: MeshSettings, client, dataplane):
        self.settings = settings
        self.client = client
        self.dataplane = dataplane
        self.agent: Agent | None = None
        self.credential = None
        self.seen_version = 0
        self.refused: tuple[PeerMap, str] | None = None
        self.reports_sent = 0
        self.heap_trim = HeapTrim(settings.status_interval)
        self.last_error = ""  # the latest mesh API trouble after start (watch, renewal)
        self.crashed: BaseException | None = None
        self._report_due = aio.Event()
        self._stopping = aio.Event()
        self._tasks: list[aio.Task] = []
        routes = self._routes()
        # The health port faces the pod network: probes and metrics (counts and reasons, no
        # addresses or identities) only. Identities, peers, SPIs and the certificate are for
        # the pod itself (issue 10), on the local listener where `ipsec-mesh-sidecar status` looks.
        self.health = StatusServer(None, settings.health_host, settings.health_port,
                                   routes={path: routes[path] for path in POD_NETWORK_ROUTES})
        self.local_status = StatusServer(None, *settings.status_listen, routes=routes) \
            if settings.status_listen else None

    # -- health port ----------------------------------------------------------------------
    def _routes(self):
        def ready():
            return readiness(self.agent)

        def status():
            if self.agent is None:
                return json_response({"ready": False, "phase": "bootstrapping"})
            return json_response({**self.agent.status(), "mesh": self.mesh_status()})

        def metrics():
            return agent_routes(self.agent)["/metrics"]() if self.agent is not None else text(503, "not ready\n")

        return {"/healthz": lambda: text(200, "ok\n"), "/ready": ready, "/readyz": ready, "/status": status,
                "/metrics": metrics}

    def mesh_status(self) -> dict:
        cred = self.credential
        return {
            "api": self.settings.api_url,
            "applied_version": self.agent.peers.peer_map.version if self.agent else 0,
            "refused": {"version": self.refused[0].version, "error": self.refused[1]} if self.refused else None,
            "certificate": {"serial": f"{cred.serial:x}", "not_after": cred.not_after,
                            "renew_at": round(cred.renew_at, 1)} if cred else None,
            "reports_sent": self.reports_sent,
            "last_error": self.last_error,
        }

    # -- lifecycle --------------------------------------------------------------------------
    async def bootstrap(self) -> None:
        s = self.settings
        first = await with_backoff(lambda: self.client.fetch_peer_map(0), "fetching the first peer map")
        self.seen_version = first.version
        try:
            peer_map = localized(first, s.pod_name, s.pod_namespace, s.pod_ips)
            self.credential = await with_backoff(lambda: issue_credential(self.client, peer_map.local.identity),
                                                 "signing our certificate request")
            peers = peer_set(peer_map, s.sidecar.ike, self.credential)
        except PeerSetError as exc:
            await self._report_refusal(first, str(exc))
            raise BootstrapError(f"peer map version {first.version} unusable: {exc}", EXIT_CONFIG) from None
        self.agent = Agent(s.sidecar, self.dataplane, peers)
        self.agent.on_change = self.request_report
        log.info("bootstrapped from the mesh API: %s, peer map v%d, certificate until %s", peer_map.local.identity,
                 peer_map.version, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.credential.not_after)))

    async def start(self) -> None:
        servers = ((self.health, "IPSEC_MESH_HEALTH_PORT"), (self.local_status, "IPSEC_MESH_STATUS_LISTEN"))
        for server, variable in servers:
            if server is None:
                continue
            try:
                await server.start()
            except OSError as exc:
                raise BootstrapError(f"{variable}: cannot listen on {server.host}:{server.port}: {exc.strerror}",
                                     EXIT_CONFIG) from None
        await self.bootstrap()
        await self.agent.start()
        for loop in (self._watch, self._renew, self._report):
            task = aio.create_task(loop(), name=f"mesh-{loop.__name__.strip('_')}")
            task.add_done_callback(self._loop_ended)
            self._tasks.append(task)
        self.request_report()

    def _loop_ended(self, task: aio.Task) -> None:
        """The loops run until cancelled: one that ends otherwise is a bug; stop (and get restarted)."""
        if task.cancelled():
            return
        self.crashed = task.exception() or RuntimeError("ended")
        log.error("%s ended unexpectedly: %r; stopping", task.get_name(), self.crashed, exc_info=self.crashed)
        self._stopping.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(aio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.agent is not None:
            signals = getattr(self, "_signals", None)
            await self.agent.stop(hand_over=signals is not None and signals.hand_over)
        for server in (self.health, self.local_status):
            if server is not None:
                await server.stop()

    async def run(self) -> None:
        self._signals = StopSignals(aio.get_running_loop(), self._stopping)
        try:
            starting = aio.create_task(self.start())
            stopping = aio.create_task(self._stopping.wait())
            await aio.wait({starting, stopping}, return_when=aio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a BootstrapError ends the run here
                await stopping
            else:
                starting.cancel()
                stopping.cancel()
        finally:
            await self.stop()
        if self.crashed is not None:
            raise BootstrapError(f"stopped after an internal error: {self.crashed!r}", EXIT_CRASHED)

    def request_stop(self) -> None:
        self._stopping.set()

    # -- peer maps -------------------------------------------------------------------------
    def apply_peer_map(self, peer_map: PeerMap) -> bool:
        """Put a newer peer map in force; False (old one stays, error reported) if unusable."""
        self.seen_version = max(self.seen_version, peer_map.version)
        s, old = self.settings, self.agent.peers
        try:
            peer_map = localized(peer_map, s.pod_name, s.pod_namespace, s.pod_ips)
            new = peer_set(peer_map, s.sidecar.ike, self.credential)
        except PeerSetError as exc:
            log.error("peer map version %d not applied, version %d stays in force: %s", peer_map.version,
                      old.peer_map.version, exc)
            self.refused = (peer_map, str(exc))
            self.request_report()
            return False
        ended = self.agent.replace_peers(new)
        self.refused = None
        if peer_map.trust_bundle and peer_map.trust_bundle != old.peer_map.trust_bundle:
            self.client.update_trust_bundle(peer_map.trust_bundle)
        log.info("peer map version %d applied: %d peer networks, %d IKE SAs ended", peer_map.version,
                 len(new.entries), ended)
        self.request_report()
        return True

    def _mesh_api_trouble(self, what: str, exc: MeshApiError) -> None:
        self.last_error = f"{what}: {exc}"

    async def _watch(self) -> None:
        """Refusals and unusable maps come out of the watch: recorded, then the same backoff; the map in force stays."""
        backoff = Backoff()
        while True:
            try:
                async for peer_map in self.client.watch_peer_maps(
                        self.seen_version, self.settings.watch_wait,
                        on_error=lambda exc: self._mesh_api_trouble("peer-map watch", exc)):
                    self.apply_peer_map(peer_map)
                    backoff.reset()
            except MeshApiError as exc:
                self._mesh_api_trouble("peer-map watch", exc)
                delay = backoff.next()
                log.error("%s; retrying in %.1fs", self.last_error, delay)
                await aio.sleep(delay)

    # -- certificate -------------------------------------------------------------------------
    async def renew_certificate(self) -> bool:
        identity = self.agent.peers.peer_map.local.identity
        credential = await retry(lambda: issue_credential(self.client, identity), "renewing our certificate",
                                 refusal_ends=False,
                                 on_error=lambda exc: self._mesh_api_trouble("certificate renewal", exc))
        try:
            peers = peer_set(self.agent.peers.peer_map, self.settings.sidecar.ike, credential)
        except PeerSetError as exc:  # not expected: the map in force took the previous certificate
            self.last_error = f"renewed certificate not usable: {exc}"
            log.error("%s", self.last_error)
            return False
        self.credential = credential
        # Same map, new credential: policies and SAs stay; new IKE SAs use the new certificate.
        self.agent.replace_peers(peers)
        log.info("certificate renewed (serial %x), valid until %s", credential.serial,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(credential.not_after)))
        return True

    async def _renew(self) -> None:
        while True:
            await aio.sleep(max(self.credential.renew_at - time.time(), 0.0))
            if not await self.renew_certificate():
                await aio.sleep(MAX_DELAY)  # the old certificate serves meanwhile

    # -- status reports ---------------------------------------------------------------------
    def request_report(self) -> None:
        self._report_due.set()

    async def _report(self) -> None:
        while True:
            # A timeout block (asyncio 3.11's wait_for could swallow a cancellation that arrives as
            # the event fires, and stop() would wait a whole interval).
            with contextlib.suppress(TimeoutError):
                async with aio.timeout(self.settings.status_interval):
                    await self._report_due.wait()
            await aio.sleep(REPORT_GAP)
            self._report_due.clear()
            try:
                await self.client.post_status(status_report(self.agent, self.refused))
                self.reports_sent += 1
            except MeshApiRequestError as exc:
                log.warning("status report not delivered: %s", exc)
            self.heap_trim()  # what the report's TLS connection (and any exchange since) freed

    async def _report_refusal(self, peer_map: PeerMap, error: str) -> None:
        """Before giving up at bootstrap, tell the operator why (best effort)."""
        message = refusal_error(peer_map, error)
        report = StatusReport(0, tuple(PeeringStatus(p.name, last_error=message) for p in peer_map.policies))
        with contextlib.suppress(MeshApiError):
            await self.client.post_status(report)
