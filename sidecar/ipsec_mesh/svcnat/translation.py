"""The sidecar's Service translation: the peer map's Services as the pod's nftables table.

Applied by the data plane after the XFRM policies, before the sidecar reports ready, and
on every new peer map. Never removed by the sidecar: on SIGTERM the table stays (fail
closed, like the policies), and the next instance replaces it in one transaction.
"""

from __future__ import annotations

import logging

from ..meshapi.model import ServiceEntry
from .nft import Nft, NftError
from .ruleset import FAMILY, TABLE, Objects, render

log = logging.getLogger("ipsec_mesh.services")


class ServiceTranslation:
    def __init__(self, netns: str | None = None, *, nft_factory=Nft):
        self.netns = netns
        self._nft_factory = nft_factory
        self._nft: Nft | None = None
        #: What the table holds after our last successful batch; None: ask the kernel first.
        self._objects: Objects | None = None
        self.wanted = 0  # services in the map in force
        self.services = 0
        self.endpoints = 0
        self.updates = 0
        self.failures = 0
        self.last_error = ""

    def apply(self, services: tuple[ServiceEntry, ...]) -> bool:
        """Make the table translate exactly `services`; False (table unchanged) if refused."""
        self.wanted = len(services)
        try:
            if self._nft is None:
                self._nft = self._nft_factory(self.netns)
            if self._objects is None:
                current = self._nft.objects()
                if current is None and not services:
                    # Nothing to translate and no table left by an earlier instance: no table at all.
                    self.services = self.endpoints = 0
                    self.last_error = ""
                    return True
                self._objects = current or Objects()
            batch = render(services, self._objects)
            self._nft.run(batch.script)
        except NftError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self._objects = None  # the kernel may differ from what we believed: re-read next time
            log.error("service translation not updated (%d services): %s", len(services), exc)
            return False
        self._objects = batch.objects
        self.services, self.endpoints = batch.services, batch.endpoints
        self.updates += 1
        self.last_error = ""
        log.info("service translation: %d services, %d endpoints", batch.services, batch.endpoints)
        return True

    def problem(self) -> str | None:
        """Why the pod must not report ready: Services it is asked to translate and cannot."""
        if self.wanted and self.last_error:
            return f"service translation failed: {self.last_error}"
        return None

    def close(self) -> None:
        """Release libnftables; the table itself stays (fail closed)."""
        if self._nft is not None:
            self._nft.close()
            self._nft = None

    def status(self) -> dict:
        return {
            "table": f"{FAMILY} {TABLE}",
            "services": self.services,
            "endpoints": self.endpoints,
            "updates": self.updates,
            "failures": self.failures,
            "last_error": self.last_error,
            "untranslated_packets": self._nft.untranslated_packets() if self._nft is not None else None,
        }
