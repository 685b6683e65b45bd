"""The Service translation, loaded when the pod first needs it.

Most pods' peer maps list no Service their pod may call through the mesh. For them the
translation (its modules 0.3 MB, libnftables through ctypes with the library's own heap 0.8 MB:
about 1 MB RssAnon per pod, docs/benchmarks.md) would only confirm there is nothing to do. So the data
plane holds this stand-in: until the map lists a Service it asks the kernel (presence.py)
whether an earlier instance left a table or a ClusterIP route; if so, or if the kernel cannot
tell, the real ServiceTranslation is loaded at once and clears them as it always did. Once
loaded it stays, and every call goes to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .presence import FAMILY, TABLE, anything_installed

if TYPE_CHECKING:
    from ..meshapi.model import ServiceEntry
    from .translation import ServiceTranslation


def idle_status() -> dict:
    """ServiceTranslation.status() of a namespace that holds none of the translation (tests compare the two)."""
    return {"table": f"{FAMILY} {TABLE}", "services": 0, "endpoints": 0, "updates": 0, "failures": 0,
            "last_error": "", "untranslated_packets": None, "per_service": {}, "mss_clamp": {}, "routes": [],
            "route_problems": {}, "route_error": "", "sctp_checksum": {"devices": [], "error": ""}}


class OnDemandTranslation:
    def __init__(self, netns: str | None = None, *, present=anything_installed):
        """`present(netns)`: whether the kernel holds any of the translation (tests pass their own)."""
        self.netns = netns
        self._present = present
        self.translation: ServiceTranslation | None = None
        self._checked = False  # the kernel was found to hold nothing of ours

    def _load(self) -> ServiceTranslation:
        if self.translation is None:
            from .translation import ServiceTranslation

            self.translation = ServiceTranslation(self.netns)
        return self.translation

    def apply(self, services: tuple[ServiceEntry, ...]) -> bool:
        if self.translation is None and not services:
            if self._checked:
                return True
            if not self._present(self.netns):
                self._checked = True
                return True
        return self._load().apply(services)

    def problem(self) -> str | None:
        return self.translation.problem() if self.translation is not None else None

    def status(self) -> dict:
        return self.translation.status() if self.translation is not None else idle_status()

    def close(self) -> None:
        if self.translation is not None:
            self.translation.close()
