"""Mesh mode trims the C heap after its status reports, at most once per status interval (agent/heap.py)."""

from __future__ import annotations

from ipsec_mesh_operator.model.peering import parse_peering
from tests.support.api_fixture import running_servers
from tests.support.mesh_sidecar_helpers import mesh_sidecar, pod, settings_for, wait_for

WEB = pod("web-0", "web", 2)
DB = pod("db-0", "db", 3)
PEERING = parse_peering("prod", "p", {"selector": {"matchLabels": {"app": "web"}},
                                      "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]})


async def test_reports_trim_the_heap_once_per_interval(tmp_path):
    async with running_servers([WEB, DB]) as (runtime, servers):
        runtime.index.upsert_peering(PEERING)
        async with mesh_sidecar(settings_for(runtime, servers, WEB, tmp_path, status_interval=0.2)) as sidecar:
            await wait_for(lambda: sidecar.reports_sent >= 3, what="three status reports")
            assert sidecar.heap_trim.interval == 0.2
            assert 1 <= sidecar.heap_trim.count <= sidecar.reports_sent
