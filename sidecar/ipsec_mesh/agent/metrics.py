"""Prometheus metrics of one sidecar (a private registry: several agents can share a process in tests)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily

XFRM_STAT = Path("/proc/net/xfrm_stat")


class _XfrmStatCollector:
    """The kernel's XFRM error counters (XfrmInNoStates, XfrmOutPolBlock, ...) of our namespace."""

    def __init__(self, path: Path = XFRM_STAT):
        self.path = path

    def collect(self):
        family = CounterMetricFamily("ipsec_mesh_kernel_xfrm_errors", "Kernel XFRM error counters",
                                     labels=["counter"])
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                family.add_metric([parts[0]], int(parts[1]))
        yield family


class Metrics:
    def __init__(self, xfrm_stat: Path = XFRM_STAT):
        self.registry = CollectorRegistry()
        r = self.registry
        self.ike_established = Counter("ipsec_mesh_ike_sa_established", "IKE SAs established", registry=r)
        self.ike_rekeys = Counter("ipsec_mesh_ike_sa_rekeys", "IKE SA rekeys", registry=r)
        self.ike_closed = Counter("ipsec_mesh_ike_sa_closed", "IKE SAs closed", ["reason"], registry=r)
        self.child_established = Counter("ipsec_mesh_child_sa_installed", "CHILD_SAs installed", registry=r)
        self.child_rekeys = Counter("ipsec_mesh_child_sa_rekeys", "CHILD_SA rekeys", registry=r)
        self.failures = Counter("ipsec_mesh_failures", "Negotiation failures by reason", ["reason"], registry=r)
        self.acquires = Counter("ipsec_mesh_kernel_acquires", "Kernel ACQUIRE messages", registry=r)
        self.ike_sas = Gauge("ipsec_mesh_ike_sas", "IKE SAs", registry=r)
        self.child_sas = Gauge("ipsec_mesh_child_sas", "CHILD_SAs", registry=r)
        r.register(_XfrmStatCollector(xfrm_stat))

    def render(self, ike_sas: int, child_sas: int) -> bytes:
        self.ike_sas.set(ike_sas)
        self.child_sas.set(child_sas)
        return generate_latest(self.registry)
