"""The sidecar's Service translation: the peer map's Services as the pod's nftables table.

Applied by the data plane after the XFRM policies, before the sidecar reports ready, and
on every new peer map. Never removed by the sidecar: on SIGTERM the table stays (fail
closed, like the policies), and the next instance takes it over: its first batch replaces
every rule, later ones change only what differs (ruleset.changes).

With the table come the ClusterIP routes (routes.py): added or replaced before the batch, so a
new Service's first call already has room for ESP, and the ones no longer wanted deleted after it.
Also before the batch: while the map lists an SCTP port, `tx-checksum-sctp` is turned off on the
devices its ClusterIPs leave by (offload.py says why), and turned back on when no SCTP port is left,
also by a later instance: which devices we changed is kept in the table (offload.OffloadRecord).
"""

from __future__ import annotations

import errno
import logging

from ..meshapi.model import MAX_SERVICES, ServiceEntry, ServiceProtocol
from .mtu import MIN_PATH_MTU, esp_inner_mtu, mss_clamp
from .nft import Nft, NftError
from .offload import SCTP_CRC, DeviceFeatures, EthtoolError, OffloadRecord
from .routes import (
    Address,
    Route,
    RouteError,
    RouteIndex,
    RoutesRefused,
    ServiceRoutes,
    derive,
    device_of,
    refusal,
)
from .ruleset import FAMILY, TABLE, Objects, Table, changes, render

log = logging.getLogger("ipsec_mesh.services")

NO_ENDPOINT = "no ready or serving endpoint: calls are rejected in the pod"
#: A Service has one ClusterIP per family, so the map's own bound on Services bounds the routes.
MAX_ROUTES_PER_FAMILY = MAX_SERVICES


class ServiceTranslation:
    def __init__(self, netns: str | None = None, *, nft_factory=Nft, routes_factory=ServiceRoutes,
                 features_factory=DeviceFeatures, record_factory=OffloadRecord):
        self.netns = netns
        self._nft_factory = nft_factory
        self._nft: Nft | None = None
        self._routes = routes_factory(netns)
        self._features = features_factory(netns)
        #: Devices that translated SCTP ClusterIPs leave by (the last update's), and whether any SCTP port is wanted.
        self._sctp_devices: tuple[str, ...] = ()
        self._sctp_wanted = False
        #: Devices on which we turned tx-checksum-sctp off (so we turn it back on, and only there): this
        #: instance's changes and, read from the kernel at the first update, those of earlier instances.
        self._turned_off: set[str] = set()
        self._record_factory = record_factory
        self._record: OffloadRecord | None = None
        self._record_read = False
        self.offload_error = ""
        #: ClusterIP -> why it has no route of ours (the last update's plan).
        self.route_problems: dict[str, str] = {}
        self.route_error = ""
        #: What the table holds after our last successful batch (rules included); None: ask the kernel first.
        self._installed: Table | None = None
        #: The Services in force in the kernel (last successful batch), whatever the kernel held before.
        self._in_force = render(())
        self._wanted: tuple[ServiceEntry, ...] = ()
        self.updates = 0
        self.failures = 0
        self.last_error = ""

    @property
    def wanted(self) -> int:
        """Services in the map in force."""
        return len(self._wanted)

    @property
    def services(self) -> int:
        return self._in_force.services

    @property
    def endpoints(self) -> int:
        return self._in_force.endpoints

    def apply(self, services: tuple[ServiceEntry, ...]) -> bool:
        """Make the table translate exactly `services`; False (table unchanged) if refused."""
        self._wanted = tuple(services)
        try:
            if self._nft is None:
                self._nft = self._nft_factory(self.netns)
                self._record = self._record_factory(self._nft)
            path_mtus = self._path_mtus()
            stale_routes = self._put_routes(path_mtus)
            self._sctp_offload()
            have: Table | Objects | None = self._installed
            if have is None:
                have = self._nft.objects()
                if have is None and not services:
                    # Nothing to translate and no table left by an earlier instance: no table at all.
                    self._in_force = render(())
                    self.last_error = ""
                    self._delete_routes(stale_routes)
                    return True
                have = have or Objects()
            want = render(self._wanted, have, self._mss(path_mtus))
            for script in changes(want, have):
                self._nft.run(script)
        except NftError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self._installed = None  # the kernel may differ from what we believed: re-read next time
            log.error("service translation not updated (%d services): %s", len(services), exc)
            return False
        self._installed = self._in_force = want
        self.updates += 1
        self.last_error = ""
        self._delete_routes(stale_routes)
        log.info("service translation: %d services, %d endpoints", want.services, want.endpoints)
        return True

    def _path_mtus(self) -> dict[Address, int]:
        """Endpoint address -> the MTU of its path (the route under its SA), where one is known.

        The ClusterIPs' own routes are ours (their MTU already has ESP taken off), so only the
        endpoints, where the packets really go, are an input.
        """
        addresses = {ep.address for service in self._wanted for port in service.ports for ep in port.endpoints}
        mtus = self._nft.route_mtus(addresses) if addresses else {}
        return {a: mtu for a, mtu in mtus.items() if mtu and mtu >= MIN_PATH_MTU[a.version]}

    def _mss(self, path_mtus: dict[Address, int]) -> dict[int, int]:
        """Per IP version, the MSS clamp for the smallest path MTU to an endpoint (kept as a fallback for
        ClusterIPs that get no route, see docs/services.md)."""
        smallest: dict[int, int] = {}
        for address, mtu in path_mtus.items():
            smallest[address.version] = min(mtu, smallest.get(address.version, mtu))
        return {version: mss_clamp(mtu, version) for version, mtu in smallest.items()}

    def _plan_routes(self, path_mtus: dict[Address, int]) -> tuple[dict[Address, Route], dict[str, str],
                                                                    dict[Address, Route]]:
        """The route each translated ClusterIP should have, why the others get none, and ours in the kernel."""
        endpoints: dict[Address, set[Address]] = {}
        for service in self._wanted:
            for cluster_ip in service.cluster_ips:
                endpoints.setdefault(cluster_ip, set()).update(
                    ep.address for port in service.ports for ep in port.endpoints
                    if ep.address.version == cluster_ip.version)
        table = self._routes.table()
        index = RouteIndex(table)
        plan: dict[Address, Route] = {}
        problems: dict[str, str] = {}
        count = {4: 0, 6: 0}
        for cluster_ip in sorted(endpoints, key=lambda a: (a.version, a)):
            known = [path_mtus[a] for a in endpoints[cluster_ip] if a in path_mtus]
            if not endpoints[cluster_ip]:
                continue  # nothing to translate to: calls are rejected in the pod
            if not known:
                problems[str(cluster_ip)] = "no path MTU known to any of its endpoints"
                continue
            if count[cluster_ip.version] >= MAX_ROUTES_PER_FAMILY:
                problems[str(cluster_ip)] = f"more than {MAX_ROUTES_PER_FAMILY} IPv{cluster_ip.version} ClusterIPs"
                continue
            route = derive(cluster_ip, esp_inner_mtu(min(known), cluster_ip.version), index)
            if isinstance(route, str):
                problems[str(cluster_ip)] = route
                continue
            plan[cluster_ip] = route
            count[cluster_ip.version] += 1
        return plan, problems, self._routes.installed(table)

    def _put_routes(self, path_mtus: dict[Address, int]) -> list[Route]:
        """Add or replace the wanted routes; our other routes (to delete after the batch)."""
        try:
            plan, self.route_problems, installed = self._plan_routes(path_mtus)
            self.route_error = ""
            self._routes.put([route for address, route in plan.items() if installed.get(address) != route])
        except RoutesRefused as exc:  # the others are in place; the stale ones can still go
            for route, error in exc.refused:
                self.route_problems[str(route.destination)] = f"the kernel refused its route: {refusal(error)}"
            self.route_error = str(exc)
            log.error("ClusterIP routes not all updated: %s", exc)
        except RouteError as exc:
            self.route_error = str(exc)
            log.error("ClusterIP routes not updated: %s", exc)
            return []
        return [route for address, route in installed.items() if address not in plan]

    def _sctp_offload(self) -> None:
        """SCTP's CRC32c in software on the devices translated SCTP ClusterIPs leave by, only while there are any."""
        cluster_ips = {ip for service in self._wanted
                       if any(port.protocol is ServiceProtocol.SCTP and port.endpoints for port in service.ports)
                       for ip in service.cluster_ips}
        self._sctp_wanted = bool(cluster_ips)
        if not self._record_read:  # first update: what earlier instances turned off is ours to turn back on
            try:
                self._turned_off |= self._record.devices()
            except NftError as exc:
                self.offload_error = f"cannot read which devices an earlier sidecar changed: {exc}"
                log.error("%s", self.offload_error)
                return
            self._record_read = True
        if not cluster_ips and not self._turned_off:
            self._sctp_devices, self.offload_error = (), ""
            return
        try:
            table, names = self._routes.table(), self._routes.link_names()
        except RouteError as exc:
            self.offload_error = f"cannot find the devices of SCTP ClusterIPs: {exc}"
            log.error("%s", self.offload_error)
            return
        index = RouteIndex(table)
        devices = tuple(sorted({names[oif] for ip in cluster_ips if (oif := device_of(ip, index)) in names}))
        errors = []
        for device in devices:
            recorded = False
            try:
                state = self._features.state(device, SCTP_CRC)
                if state.active and not state.fixed and device not in self._turned_off:
                    self._record.add(device)  # first: never a device turned off without its record
                    self._turned_off.add(device)
                    recorded = True
                    log.info("%s: turning %s off (SCTP to a ClusterIP computes its CRC32c in software)",
                             device, SCTP_CRC)
                now = self._features.set(device, SCTP_CRC, False)
            except (EthtoolError, NftError) as exc:
                errors.append(str(exc))
                now = None
            if now is not None and now.active:
                errors.append(f"{device}: {SCTP_CRC} is still {now.text()}")
            if recorded and (now is None or now.active):
                self._forget(device, errors)  # not changed after all: not ours to turn on later
        for device in sorted(self._turned_off - set(devices)):
            try:
                self._features.set(device, SCTP_CRC, True)
            except EthtoolError as exc:
                if exc.code != errno.ENODEV:  # a device that is gone has nothing to restore
                    errors.append(str(exc))
                    continue
            self._forget(device, errors)
        self._sctp_devices = devices
        self.offload_error = "; ".join(errors)
        if errors:
            log.error("SCTP checksum offload: %s", self.offload_error)

    def _forget(self, device: str, errors: list[str]) -> None:
        try:
            self._record.remove(device)
        except NftError as exc:
            errors.append(f"{device}: cannot remove its record: {exc}")
            return
        self._turned_off.discard(device)

    def sctp_checksum(self) -> dict:
        """The devices that carry translated SCTP, and those we changed (as the table records them), with the
        feature as the kernel has it now."""
        recorded: set[str] | None = set(self._turned_off)
        try:
            recorded = set(self._record.devices()) if self._record is not None else recorded
        except NftError:
            recorded = None  # offload_error keeps the last update's outcome; a failed read is not one
        devices = []
        changed = self._turned_off | (recorded or set())
        for device in self._sctp_devices + tuple(sorted(changed - set(self._sctp_devices))):
            try:
                state: str | None = self._features.state(device, SCTP_CRC).text()
            except EthtoolError:
                state = None  # offload_error keeps the last update's outcome; a failed read is not one
            devices.append({"dev": device, SCTP_CRC: state, "wanted_off": device in self._sctp_devices,
                            "turned_off_by_sidecar": device in recorded if recorded is not None else None})
        return {"devices": devices, "error": self.offload_error}

    def _delete_routes(self, stale: list[Route]) -> None:
        try:
            self._routes.delete(stale)
        except RouteError as exc:
            self.route_error = str(exc)
            log.error("ClusterIP routes not removed: %s", exc)

    def routes(self) -> list[dict] | None:
        """Our ClusterIP routes as the kernel holds them now (None: it could not be asked)."""
        try:
            names = self._routes.link_names()
            return [route.status(names) for _, route in sorted(self._routes.installed().items(),
                                                                key=lambda item: (item[0].version, item[0]))]
        except RouteError:
            return None  # route_error keeps the last update's outcome; a failed read is not one

    def problem(self) -> str | None:
        """Why the pod must not report ready: Services it is asked to translate and cannot."""
        if self._wanted and self.last_error:
            return f"service translation failed: {self.last_error}"
        if self._wanted and self.route_error:
            return f"ClusterIP routes failed: {self.route_error}"
        if self._sctp_wanted and self.offload_error:
            return f"SCTP checksum offload not turned off: {self.offload_error}"
        return None

    def close(self) -> None:
        """Release libnftables and the routing socket; the table and the routes stay (fail closed)."""
        self._routes.close()
        self._features.close()
        if self._nft is not None:
            self._nft.close()
            self._nft = None

    def per_service(self) -> dict[str, dict]:
        """Per Service of the map: does the kernel translate it, as the map now says, and if not why.

        `translated` is read back from the kernel: at least one of the Service's lookup elements
        is in the table, pointing where the last batch put it.
        """
        try:
            kernel = self._nft.lookup_elements() if self._nft is not None else {}
            unread = ""
        except NftError as exc:
            kernel, unread = {}, f"cannot read the table: {exc}"
        result = {}
        for service in self._wanted:
            installed = self._in_force.parts.get(service.key)
            part = installed[1] if installed is not None else None
            wanted = bool(part is not None and part.states)
            translated = wanted and any(kernel.get(name, {}).get(key) == data
                                        for name, items in part.elements.items() if name.startswith("svc")
                                        for key, data in items.items())
            current = installed is not None and installed[0] == service
            error = "" if current else (self.last_error or "not installed yet")
            if current and not wanted:
                error = NO_ENDPOINT
            elif wanted and not translated:
                error = unread or "its lookup elements are not in the kernel's table (changed by someone else?)"
            result[service.key] = {"translated": translated, "current": current, "error": error}
            if part is not None and part.notes:
                result[service.key]["note"] = "; ".join(part.notes)
        return result

    def status(self) -> dict:
        per_service = self.per_service()
        return {
            "table": f"{FAMILY} {TABLE}",
            "services": sum(1 for entry in per_service.values() if entry["translated"]),
            "endpoints": self.endpoints,
            "updates": self.updates,
            "failures": self.failures,
            "last_error": self.last_error,
            "untranslated_packets": self._nft.untranslated_packets() if self._nft is not None else None,
            "per_service": per_service,
            "mss_clamp": {f"ipv{version}": mss for version, mss in sorted(self._in_force.mss.items())},
            "routes": self.routes(),
            "route_problems": dict(self.route_problems),
            "route_error": self.route_error,
            "sctp_checksum": self.sctp_checksum(),
        }
