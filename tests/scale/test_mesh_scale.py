"""The whole mesh on one machine, CI size: 20 real mesh-mode sidecars (190 pairs) in their own
network namespaces on one bridge, the standalone operator serving one namespace-wide peering.

Every pair is established (as both ends' /status report it), a pod added and a pod removed
reach every sidecar's applied peer map, and after every sidecar restarts at once every pair
comes back. Bounds are generous failure limits, never timing claims: the figures are in
bench/bench_mesh_scale.py and docs/benchmarks.md.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.scale.harness import POLICY_ONLY_SETTINGS, PUSHBACK_COUNTERS, MeshOnOneMachine

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to create network namespaces")

SIDECARS = 20
BOUND = 180.0  # seconds: a failure limit for each phase, far above what it takes


def test_twenty_sidecars_every_pair_add_remove_and_restart_all():
    mesh = MeshOnOneMachine(SIDECARS)
    try:
        since = mesh.start()
        up = mesh.wait_all_pairs(since, BOUND)
        assert up.pairs == 190 and up.missing == [], f"{len(up.missing)} pairs not established: {up.missing[:10]}"

        added, change = mesh.add_pod()
        assert change.missing == [] and len(change.latencies) == SIDECARS, change.summary()
        grown = mesh.wait_all_pairs(time.monotonic(), BOUND)
        assert grown.pairs == 210 and grown.missing == [], grown.missing[:10]

        change = mesh.remove_pod("p000")
        assert change.missing == [] and len(change.latencies) == SIDECARS, change.summary()
        # Nobody keeps an SA with the removed pod (its address is no one's peer any more).
        statuses = mesh.statuses()
        removed = mesh.config.pod("p000").ips[0]
        assert not [n for n, s in statuses.items() for sa in s["ike_sas"] if sa["remote"].startswith(removed + "[")]

        before = mesh.operator_metrics()
        restarted = mesh.restart_all()
        back = mesh.wait_all_pairs(restarted, BOUND)
        assert back.pairs == 190 and back.missing == [], f"{len(back.missing)} pairs not back: {back.missing[:10]}"
        statuses = mesh.statuses()
        counters, failures = mesh.counters(statuses), mesh.failures(statuses)
        # 19 peers each at most: below the default thresholds, so no responder had to push back.
        assert {k: counters.get(k, 0) for k in PUSHBACK_COUNTERS} == dict.fromkeys(PUSHBACK_COUNTERS, 0)
        # Nothing went wrong that a plaintext fallback could hide: no refused peer, no auth failure,
        # no malformed datagram, no SA the data plane refused.
        assert counters.get("refused_unknown_peer", 0) == 0 and counters.get("malformed", 0) == 0
        assert failures == {}, failures
        after = mesh.operator_metrics()
        refused = {k: v for k, v in after.items() if k.startswith(("ipsec_mesh_api_requests_refused_total",
                                                                  "ipsec_mesh_server_connections_dropped_total"))}
        assert not any(refused.values()), refused
        issued = after["ipsec_mesh_certificates_issued_total"] - before["ipsec_mesh_certificates_issued_total"]
        assert issued == SIDECARS  # one bootstrap each, no retries forced by the operator
    finally:
        mesh.close()


def test_twenty_sidecars_policies_in_every_kernel_follow_add_and_remove():
    """The XFRM data plane where no SA is needed (no one talks): each pod's kernel holds
    transport policies both ways for every other pod, and a pod added or removed is in or out
    of every kernel's policies once each sidecar says it applied the map."""
    mesh = MeshOnOneMachine(SIDECARS, settings=POLICY_ONLY_SETTINGS)

    def check_kernels() -> None:
        addresses = {name: mesh.config.pod(name).ips[0] for name in mesh.members}
        wrong = {}
        for name in mesh.members:
            others = {a for n, a in addresses.items() if n != name}
            held = mesh.kernel_policy_peers(name)
            if held != {"out": others, "in": others}:
                wrong[name] = {d: sorted(held[d] ^ others) for d in held}
        assert wrong == {}, wrong

    try:
        mesh.start()
        check_kernels()
        _, change = mesh.add_pod()
        assert change.missing == [] and len(change.latencies) == SIDECARS, change.summary()
        check_kernels()
        change = mesh.remove_pod("p000")
        assert change.missing == [] and len(change.latencies) == SIDECARS, change.summary()
        check_kernels()
        statuses = mesh.statuses()
        assert all(s["ready"] for s in statuses.values()) and mesh.failures(statuses) == {}
    finally:
        mesh.close()
