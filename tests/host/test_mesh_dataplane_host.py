"""Mesh mode with the XFRM data plane (host kernel, root): policies follow the operator's peer maps.

The sidecar's sockets and the mesh API stay on loopback in the test's own namespace; the
data plane programs a throw-away namespace, where the policies are checked.
"""

from __future__ import annotations

from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from ipsec_mesh_operator.model.peering import parse_peering
from tests.host.test_xfrm_dataplane_host import pair, policies  # noqa: F401  (fixture)
from tests.support.api_fixture import running_servers
from tests.support.mesh_sidecar_helpers import mesh_sidecar, pod, settings_for, wait_for

WEB, DB, CACHE = pod("web-0", "web", 12), pod("db-0", "db", 13), pod("cache-0", "db", 14)
PEERING = parse_peering("prod", "p", {"selector": {"matchLabels": {"app": "web"}},
                                      "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]})


def selector(src: str, dst: str) -> str:
    return f"src {src}/32 dst {dst}/32"


async def test_xfrm_policies_follow_peer_map_updates(pair, tmp_path):  # noqa: F811  (the fixture)
    web, db, cache = WEB.ips[0], DB.ips[0], CACHE.ips[0]
    async with running_servers([WEB, DB]) as (runtime, servers):
        runtime.index.upsert_peering(PEERING)
        settings = settings_for(runtime, servers, WEB, tmp_path)
        async with mesh_sidecar(settings, XfrmDataPlane(netns=pair.a)) as sidecar:
            text = policies(pair.a)
            assert selector(web, db) in text and selector(db, web) in text
            assert "level use" not in text  # require: fail closed
            runtime.index.upsert_pod(CACHE)
            await wait_for(lambda: selector(web, cache) in policies(pair.a), what="policy for the new pod")
            runtime.index.remove_pod(DB.key)
            await wait_for(lambda: selector(web, db) not in policies(pair.a), what="policy of the removed pod gone")
            final = policies(pair.a)
            assert selector(db, web) not in final and selector(cache, web) in final
            assert sidecar.agent.dataplane.status()["policies"] == 2
