"""Prometheus metrics of one sidecar, in the text exposition format (0.0.4).

The sidecar lives in every pod, so it writes the format itself (a few counters and
gauges) rather than import prometheus_client (about 2 MB resident). Series names are
those prometheus_client gave them: counters end in `_total`.
"""

from __future__ import annotations

import os

XFRM_STAT = "/proc/net/xfrm_stat"


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _number(value: float) -> str:
    return repr(float(value))


class _Child:
    def __init__(self, family: "Family", key: tuple[str, ...]):
        self.family, self.key = family, key

    def inc(self, amount: float = 1.0) -> None:
        self.family.inc_key(self.key, amount)


class Family:
    """One counter or gauge, with or without labels."""

    def __init__(self, name: str, help_text: str, kind: str, labelnames: tuple[str, ...] = ()):
        self.name = name + "_total" if kind == "counter" else name
        self.type_name = name
        self.help = help_text
        self.kind = kind
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}

    def labels(self, *values: str) -> _Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.type_name} takes labels {self.labelnames}")
        return _Child(self, tuple(str(v) for v in values))

    def inc(self, amount: float = 1.0) -> None:
        self.inc_key((), amount)

    def inc_key(self, key: tuple[str, ...], amount: float) -> None:
        if self.kind == "counter" and amount < 0:
            raise ValueError("counters only go up")
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float) -> None:
        self.values[()] = float(value)

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.type_name} {self.kind}"]
        for key, value in self.values.items():
            labels = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(self.labelnames, key, strict=True))
            out.append(f"{self.name}{{{labels}}} {_number(value)}" if labels else f"{self.name} {_number(value)}")
        return out


def counter(name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Family:
    return Family(name, help_text, "counter", tuple(labelnames))


def gauge(name: str, help_text: str) -> Family:
    return Family(name, help_text, "gauge")


def xfrm_stat_family(path: str | os.PathLike[str]) -> Family:
    """The kernel's XFRM error counters (XfrmInNoStates, XfrmOutPolBlock, ...) of our namespace."""
    family = counter("ipsec_mesh_kernel_xfrm_errors", "Kernel XFRM error counters", ("counter",))
    try:
        with open(path) as stat:
            lines = stat.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            family.values[(parts[0],)] = float(parts[1])
    return family


class Metrics:
    def __init__(self, xfrm_stat: str | os.PathLike[str] = XFRM_STAT):
        self.xfrm_stat = xfrm_stat
        self.ike_established = counter("ipsec_mesh_ike_sa_established", "IKE SAs established")
        self.ike_rekeys = counter("ipsec_mesh_ike_sa_rekeys", "IKE SA rekeys")
        self.ike_closed = counter("ipsec_mesh_ike_sa_closed", "IKE SAs closed", ("reason",))
        self.child_established = counter("ipsec_mesh_child_sa_installed", "CHILD_SAs installed")
        self.child_rekeys = counter("ipsec_mesh_child_sa_rekeys", "CHILD_SA rekeys")
        self.failures = counter("ipsec_mesh_failures", "Negotiation failures by reason", ("reason",))
        self.acquires = counter("ipsec_mesh_kernel_acquires", "Kernel ACQUIRE messages")
        self.nat_mappings = counter("ipsec_mesh_nat_mapping_changes",
                                    "Kernel NAT mapping changes of a peer, by what was done", ("result",))
        self.inactivity_checks = counter("ipsec_mesh_child_sa_inactivity_checks",
                                         "CHILD_SA packet counts read from the kernel, by what the core decided "
                                         "(idle: deleted)", ("result",))
        self.liveness_checks = counter("ipsec_mesh_child_sa_liveness_checks",
                                       "Inbound byte counts read from the kernel when a liveness check fell due "
                                       "(alive: ESP arrived, no check needed)", ("result",))
        self.policy_expires = counter("ipsec_mesh_kernel_policy_expires",
                                      "Lifetime expiries of our policies (which have none: always a fault)", ("kind",))
        self.ike_sas = gauge("ipsec_mesh_ike_sas", "IKE SAs")
        self.child_sas = gauge("ipsec_mesh_child_sas", "CHILD_SAs")
        self.families = [self.ike_established, self.ike_rekeys, self.ike_closed, self.child_established,
                         self.child_rekeys, self.failures, self.acquires, self.nat_mappings,
                         self.inactivity_checks, self.liveness_checks, self.policy_expires, self.ike_sas, self.child_sas]

    def render(self, ike_sas: int, child_sas: int, services: dict | None = None) -> bytes:
        """`services`: the data plane's Service translation status, if it has one."""
        self.ike_sas.set(ike_sas)
        self.child_sas.set(child_sas)
        extra = [xfrm_stat_family(self.xfrm_stat)] + (service_families(services) if services else [])
        lines = [line for family in self.families + extra for line in family.lines()]
        return ("\n".join(lines) + "\n").encode()


def service_families(status: dict) -> list[Family]:
    """The Service translation's figures (kept by svcnat and the kernel) as metric families."""
    families = []
    for name, help_text, kind, value in (
        ("ipsec_mesh_services_translated", "Services the pod translates to endpoints itself", "gauge",
         status["services"]),
        ("ipsec_mesh_service_endpoints_translated", "Endpoint translations (per service port and family)", "gauge",
         status["endpoints"]),
        ("ipsec_mesh_service_translation_last_update_ok", "1 if the latest translation update was applied",
         "gauge", 0 if status["last_error"] else 1),
        ("ipsec_mesh_service_translation_failures", "Translation updates the kernel refused", "counter",
         status["failures"]),
        ("ipsec_mesh_service_untranslated_packets",
         "Packets to a service port with no usable endpoint, rejected in the pod", "counter",
         status["untranslated_packets"]),
    ):
        if value is None:
            continue
        family = Family(name, help_text, kind)
        family.values[()] = float(value)
        families.append(family)
    return families
