"""The whole mesh on one machine: N real sidecars in mesh mode against the standalone operator.

Built on the demo's pieces (`ipsec_mesh_operator.demo`: network namespaces on one bridge in a
node namespace, routed through it (one neighbour entry per pod: the kernel's ARP table is
shared by all namespaces and 100 pods on a plain bridge overflow it), `ipsec-mesh standalone` serving the mesh API there, `ipsec-mesh-sidecar mesh`
in each pod with the environment a cluster's injection gives it), scaled out: one
namespace-wide certificate peering, data plane `none` (this kernel has XFRM but no ESP, and
every pair should hold SAs) and `initiate: peers`, so each sidecar connects to every pod of
its peer map, at start and whenever the map adds one. Everything measured is what the
processes report or the kernel accounts: each sidecar's `/status` (IKE SAs and their
`established_at` on the shared monotonic clock, counters), its log's "peer map version N
applied" lines, /proc for CPU, RSS and Pss, the operator's /metrics. Used by
tests/scale/test_mesh_scale.py (20 sidecars) and bench/bench_mesh_scale.py (100).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import ipaddress
import json
import os
import re
import signal
import statistics
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ipsec_mesh_operator.demo.config import DemoConfig
from ipsec_mesh_operator.demo.runner import Demo
from ipsec_mesh_operator.netns import in_netns, run
from ipsec_mesh_operator.standalone.config import parse_config

NAMESPACE = "mesh"
NETWORK = ipaddress.IPv4Network("10.60.0.0/16")
METRICS_PORT = 9464  # in the harness's own node namespace
#: The product's IKE defaults (retransmissions, DPD, cookie and half-open limits): what is measured
#: is what a mesh would run.
SIDECAR_SETTINGS = {"dataplane": "none", "initiate": "peers", "log": {"format": "json"}}
#: Policies only: the XFRM data plane with no one initiating, for a mesh whose pairs do not talk
#: (the kernel here has XFRM but no ESP, so an SA could not be installed).
POLICY_ONLY_SETTINGS = {"dataplane": "xfrm", "log": {"format": "json"}}
#: /status counters that say the IKE responders pushed back (COOKIE challenges, half-open limits).
PUSHBACK_COUNTERS = ("cookies_sent", "cookie_invalid", "refused_half_open_limit", "evicted_half_open")
_APPLIED = re.compile(r"peer map version (\d+) applied")


def pod_name(index: int) -> str:
    return f"p{index:03d}"


def pod_address(index: int) -> str:
    return str(NETWORK.network_address + 10 + index)


def mesh_document(pods: int) -> dict:
    """The standalone operator's YAML: `pods` pods in one namespace, one namespace-wide peering."""
    return {
        "trustDomain": "scale.mesh.local",
        "pods": [{"name": pod_name(i), "namespace": NAMESPACE, "labels": {"app": "mesh"}, "ips": [pod_address(i)]}
                 for i in range(pods)],
        "peerings": [{"name": "everyone", "namespace": NAMESPACE,
                      "spec": {"selector": {}, "peers": [{"podSelector": {}}], "enforcement": "require"}}],
    }


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 20 values is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def proc_cpu_seconds(pid: int) -> float:
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_kib(pid: int, key: str, file: str = "status") -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/{file}")


@dataclass
class Establishment:
    """Which pairs hold an established IKE SA with an installed CHILD_SA, as both ends report it."""

    pairs: int
    established: int
    missing: list[tuple[str, str]]
    #: Seconds from `since` to the latest `established_at` among the pairs' SAs.
    seconds: float | None = None


@dataclass
class Change:
    """A pod added or removed: when each affected sidecar applied the peer map that says so."""

    what: str
    latencies: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        values = list(self.latencies.values())
        return {"what": self.what, "sidecars": len(values), "missing": self.missing,
                "p50": round(statistics.median(values), 3) if values else None,
                "p99": round(percentile(values, 0.99), 3) if values else None}


class MeshOnOneMachine(Demo):
    """`sidecars` pods with sidecars, plus `spare` pods whose namespaces exist but that the
    operator learns of only when `add_pod` is called."""

    def __init__(self, sidecars: int, spare: int = 1, out=None, settings: dict = SIDECAR_SETTINGS):
        document = mesh_document(sidecars + spare)
        config = DemoConfig(NETWORK, parse_config(document), document)
        super().__init__(config, out=out if out is not None else open(os.devnull, "w"))
        self.settings = settings
        self.members = [pod_name(i) for i in range(sidecars)]
        self.spares = [pod_name(i) for i in range(sidecars, sidecars + spare)]
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)

    # -- building ----------------------------------------------------------------------
    def start(self) -> float:
        """Network, operator, sidecars; returns when every sidecar is ready (monotonic start time)."""
        self.build_network(routed=True)
        self.start_operator(self.members, metrics_port=METRICS_PORT)
        started = time.monotonic()
        self.start_sidecars(self.members, self.settings)
        return started

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.cleanup()

    # -- reading -----------------------------------------------------------------------
    def statuses(self) -> dict[str, dict | None]:
        names = list(self.sidecars)
        return dict(zip(names, self.pool.map(lambda n: self.sidecars[n].status(), names), strict=True))

    def establishment(self, since: float, statuses: dict[str, dict | None] | None = None) -> Establishment:
        """Every unordered pair of running sidecars counts once both ends report an established
        IKE SA with the other that carries an installed CHILD_SA."""
        statuses = self.statuses() if statuses is None else statuses
        address = {name: self.config.pod(name).ips[0] for name in statuses}
        held: dict[str, dict[str, float]] = {}
        for name, status in statuses.items():
            held[name] = {}
            for sa in (status or {}).get("ike_sas", []):
                if sa.get("state") == "established" and any(c.get("state") == "installed"
                                                            for c in sa.get("children", [])):
                    remote = sa["remote"].split("[", 1)[0]  # "ADDRESS[PORT]"
                    held[name][remote] = max(sa.get("established_at") or 0.0, held[name].get(remote, 0.0))
        names = sorted(statuses)
        missing, latest = [], since
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if address[b] in held[a] and address[a] in held[b]:
                    latest = max(latest, held[a][address[b]], held[b][address[a]])
                else:
                    missing.append((a, b))
        pairs = len(names) * (len(names) - 1) // 2
        return Establishment(pairs, pairs - len(missing), missing, round(latest - since, 2) if not missing else None)

    def wait_all_pairs(self, since: float, timeout: float) -> Establishment:
        deadline = time.monotonic() + timeout
        while True:
            result = self.establishment(since)
            if not result.missing or time.monotonic() > deadline:
                return result
            time.sleep(1.0)

    def kernel_policy_peers(self, name: str) -> dict[str, set[str]]:
        """What the kernel in `name`'s namespace holds: per direction (out, in), the peer addresses
        that our transport policies cover."""
        listing = run("ip", "-n", self.netns(name), "xfrm", "policy", "list").stdout
        peers: dict[str, set[str]] = {"out": set(), "in": set()}
        for src, dst, direction in re.findall(r"src (\S+)/\d+ dst (\S+)/\d+.*?\n\s*dir (\w+)", listing):
            if direction in peers:
                peers[direction].add(dst if direction == "out" else src)
        return peers

    def counters(self, statuses: dict[str, dict | None] | None = None) -> dict[str, int]:
        """The IKE cores' counters summed over every sidecar."""
        total: dict[str, int] = {}
        for status in (self.statuses() if statuses is None else statuses).values():
            for key, value in ((status or {}).get("counters") or {}).items():
                total[key] = total.get(key, 0) + int(value)
        return total

    def failures(self, statuses: dict[str, dict | None] | None = None) -> dict[str, int]:
        """What went wrong, summed: last_failures by reason, refused SA installs."""
        total: dict[str, int] = {}
        for status in (self.statuses() if statuses is None else statuses).values():
            for entry in ((status or {}).get("last_failures") or {}).values():
                total[entry["reason"]] = total.get(entry["reason"], 0) + int(entry.get("count", 1))
            if (status or {}).get("install_failures"):
                total["install"] = total.get("install", 0) + len(status["install_failures"])
        return total

    def operator_metrics(self) -> dict[str, float]:
        def scrape() -> str:
            with urllib.request.urlopen(f"http://{self.config.node_address}:{METRICS_PORT}/metrics", timeout=10) as r:
                return r.read().decode()
        values: dict[str, float] = {}
        for line in in_netns(self.node, scrape).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def operator_usage(self) -> dict[str, float]:
        """The operator process's CPU seconds so far and its resident memory (MiB)."""
        pid = self.operator.process.pid
        return {"cpu_s": round(proc_cpu_seconds(pid), 2), "rss_mib": round(proc_kib(pid, "VmRSS") / 1024, 1)}

    def sidecar_memory(self) -> dict[str, float]:
        """Pss (what each process costs once shared pages are split among their users), RSS and
        RssAnon of every sidecar, in MiB."""
        pss, rss, anon = [], [], []
        for sidecar in self.sidecars.values():
            pid = sidecar.process.pid
            pss.append(proc_kib(pid, "Pss", "smaps_rollup") / 1024)
            rss.append(proc_kib(pid, "VmRSS") / 1024)
            anon.append(proc_kib(pid, "RssAnon") / 1024)
        return {"sidecars": len(pss), "pss_total_mib": round(sum(pss), 1),
                "pss_per_pod_mib": round(statistics.mean(pss), 1), "rss_per_pod_mib": round(statistics.mean(rss), 1),
                "rss_anon_per_pod_mib": round(statistics.mean(anon), 1)}

    def applied_at(self, name: str, version: int) -> float | None:
        """Wall-clock time of the sidecar's log line saying it applied peer-map `version` (or a later one)."""
        for line in self.sidecars[name].log().splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            found = _APPLIED.search(record.get("message", ""))
            if found and int(found.group(1)) >= version:
                stamp = datetime.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
                return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
        return None

    # -- changing ----------------------------------------------------------------------
    def _versions(self) -> dict[str, int]:
        return {name: ((status or {}).get("mesh") or {}).get("applied_version", 0)
                for name, status in self.statuses().items()}

    def _apply(self, what: str, watchers: list[str], timeout: float) -> Change:
        """Reload the operator's YAML (SIGHUP) and time each watcher's next peer map from its log."""
        before = self._versions()
        self.write_operator_config(self.members)
        sent = time.time()
        self.operator.process.send_signal(signal.SIGHUP)
        change = Change(what)
        deadline = time.monotonic() + timeout
        pending = set(watchers)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                at = self.applied_at(name, before.get(name, 0) + 1)
                if at is not None:
                    change.latencies[name] = round(max(0.0, at - sent), 3)
                    pending.discard(name)
            time.sleep(0.2)
        change.missing = sorted(pending)
        return change

    def add_pod(self, timeout: float = 60) -> tuple[str, Change]:
        """Tell the operator of a spare pod, time its arrival in every sidecar's peer map, start its sidecar."""
        name = self.spares.pop(0)
        watchers = list(self.members)
        self.members.append(name)
        change = self._apply(f"add {name}", watchers, timeout)
        self.start_sidecars([name], self.settings)
        return name, change

    def remove_pod(self, name: str, timeout: float = 60) -> Change:
        """Delete a pod: its sidecar stops (SIGTERM, as the kubelet does) and the operator forgets it."""
        self.members.remove(name)
        self.sidecars.pop(name).stop()
        return self._apply(f"remove {name}", list(self.members), timeout)

    def restart_all(self, hard: bool = False) -> float:
        """Stop every sidecar at once (SIGTERM, or SIGKILL with `hard`), then start them all at once;
        returns the monotonic time of the restart, when every sidecar is ready again."""
        sidecars = list(self.sidecars.values())
        for sidecar in sidecars:
            sidecar.process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        for sidecar in sidecars:
            sidecar.process.wait(30)
        self.sidecars.clear()
        started = time.monotonic()
        self.start_sidecars(self.members, self.settings)
        return started
