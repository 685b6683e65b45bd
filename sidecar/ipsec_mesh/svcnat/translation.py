"""The sidecar's Service translation: the peer map's Services as the pod's nftables table.

Applied by the data plane after the XFRM policies, before the sidecar reports ready, and
on every new peer map. Never removed by the sidecar: on SIGTERM the table stays (fail
closed, like the policies), and the next instance takes it over: its first batch replaces
every rule, later ones change only what differs (ruleset.changes).
"""

from __future__ import annotations

import logging

from ..meshapi.model import ServiceEntry
from .mtu import MIN_PATH_MTU, mss_clamp
from .nft import Nft, NftError
from .ruleset import FAMILY, TABLE, Objects, Table, changes, render

log = logging.getLogger("ipsec_mesh.services")

NO_ENDPOINT = "no ready or serving endpoint: calls are rejected in the pod"


class ServiceTranslation:
    def __init__(self, netns: str | None = None, *, nft_factory=Nft):
        self.netns = netns
        self._nft_factory = nft_factory
        self._nft: Nft | None = None
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
            have: Table | Objects | None = self._installed
            if have is None:
                have = self._nft.objects()
                if have is None and not services:
                    # Nothing to translate and no table left by an earlier instance: no table at all.
                    self._in_force = render(())
                    self.last_error = ""
                    return True
                have = have or Objects()
            want = render(self._wanted, have, self._mss())
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
        log.info("service translation: %d services, %d endpoints", want.services, want.endpoints)
        return True

    def _mss(self) -> dict[int, int]:
        """Per IP version, the MSS clamp for the smallest route MTU to a ClusterIP or an endpoint.

        The socket's segment size must fit the path to the endpoint once ESP is added; the
        ClusterIP's route is taken too, in case it is the smaller one.
        """
        addresses = {address for service in self._wanted for address in service.cluster_ips}
        addresses |= {ep.address for service in self._wanted for port in service.ports for ep in port.endpoints}
        mtus = self._nft.route_mtus(addresses) if addresses else {}
        smallest: dict[int, int] = {}
        for address, mtu in mtus.items():
            if mtu and mtu >= MIN_PATH_MTU[address.version]:
                smallest[address.version] = min(mtu, smallest.get(address.version, mtu))
        return {version: mss_clamp(mtu, version) for version, mtu in smallest.items()}

    def problem(self) -> str | None:
        """Why the pod must not report ready: Services it is asked to translate and cannot."""
        if self._wanted and self.last_error:
            return f"service translation failed: {self.last_error}"
        return None

    def close(self) -> None:
        """Release libnftables; the table itself stays (fail closed)."""
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
        }
