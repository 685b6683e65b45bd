"""Two standalone operators federated: east publishes its bundle, west fetches it into its peer maps."""

from __future__ import annotations

import copy
import ssl
from dataclasses import replace

import aiohttp
import pytest

from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.standalone.admin import overview
from ipsec_mesh_operator.standalone.config import StandaloneConfigError, parse_config
from tests.support.standalone_fixture import client_for, running

EAST = {
    "trustDomain": "east.example",
    "bundleEndpoint": {"port": 0},
    "pods": [{"name": "api", "namespace": "batch", "labels": {"app": "api"}, "ips": ["10.48.0.10"]}],
    "peerings": [],
}


async def admin_post(operator, path: str, token: str | None = None) -> tuple[int, dict]:
    url = (operator.state_dir / "api-url").read_text().strip() + path
    token = token or (operator.state_dir / "admin-token").read_text().strip()
    context = ssl.create_default_context(cafile=str(operator.state_dir / "ca-bundle.pem"))
    async with aiohttp.ClientSession() as session:
        async with session.post(url, ssl=context, headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status, await response.json()


def west(bundle_url: str, bootstrap: str) -> dict:
    return {
        "trustDomain": "west.example",
        "pods": [{"name": "worker", "namespace": "batch", "labels": {"app": "worker"}, "ips": ["10.32.0.10"]}],
        "configMaps": [{"name": "east-bootstrap", "namespace": "batch", "data": {"ca.crt": bootstrap}}],
        "peerings": [{"name": "to-east", "namespace": "batch", "spec": {
            "selector": {"matchLabels": {"app": "worker"}},
            "peers": [{"remote": {"name": "east", "cidrs": ["10.48.0.0/16"], "identities": ["*.batch.pod.east.example"],
                                  "federation": {"endpoint": bundle_url, "trustDomain": "east.example",
                                                 "bootstrapBundle": {"name": "east-bootstrap"},
                                                 "refreshInterval": "5s"}}}]}}],
    }


async def test_west_fetches_easts_bundle_and_follows_its_rotation(tmp_path, monkeypatch):
    (tmp_path / "east").mkdir()
    (tmp_path / "west").mkdir()
    async with running(tmp_path / "east", EAST, OperatorConfig(key_check_interval=3600, ca_propagation=600)) as east:
        bundle_url = (east.state_dir / "bundle-url").read_text().strip()
        bootstrap = (east.state_dir / "ca-bundle.pem").read_text()
        async with running(tmp_path / "west", west(bundle_url, bootstrap)) as west_op:
            async with client_for(west_op, "batch", "worker") as client:
                peer_map = await client.fetch_peer_map()
            [policy] = peer_map.policies
            [remote] = policy.peers
            assert "".join(remote.trust_bundle) == bootstrap
            [state] = west_op.runtime.federation.of(("batch", "to-east")).values()
            assert state.fresh and state.sequence is not None
            # East's admin starts a CA rotation: the successor is published at once (signs after 600 s).
            clock = east.runtime.clock
            status, answer = await admin_post(east, "/v1/admin/rotate-ca")
            assert status == 200 and answer["trustBundleSize"] == 2 and len(answer["generations"]) == 2
            assert (await admin_post(east, "/v1/admin/rotate-ca"))[0] == 409  # one at a time
            assert (await admin_post(east, "/v1/admin/rotate-ca", token="wrong"))[0] == 401
            # Due now (rather than in 5 s): the next maintenance round fetches.
            west_op.runtime.federation.states[(("batch", "to-east"), "east")] = replace(state, next_attempt=0.0)
            await west_op.maintain()
            async with client_for(west_op, "batch", "worker") as client:
                peer_map = await client.fetch_peer_map()
            [remote] = peer_map.policies[0].peers
            assert remote.trust_bundle == east.runtime.ca.trust_bundle(clock())
            assert len(remote.trust_bundle) == 2
            [overview_entry] = overview(west_op.runtime, [("batch", "to-east")], {}, {})["peerings"]
            assert overview_entry["federation"][0]["fresh"] is True
            assert overview_entry["federation"][0]["authorities"] == 2
            assert overview_entry["remotes"] == [{"name": "east", "cidrs": ["10.48.0.0/16"], "trust": "federation",
                                                  "identities": ["*.batch.pod.east.example"]}]
            await explain_through_the_standalone_source(west_op.state_dir, monkeypatch)


async def explain_through_the_standalone_source(state_dir, monkeypatch) -> None:
    """`ipsec-mesh explain batch/worker 10.48.0.10 --standalone DIR`: the overview over HTTPS names the remote
    and its fresh bundle; worker's sidecar (its /status, no netns here) has no SA with east yet."""
    import asyncio
    import io
    import json
    from contextlib import redirect_stdout

    from ipsec_mesh_operator import main as cli
    from ipsec_mesh_operator.cli.sources import StandaloneSource

    asked = []

    def sidecar_status(netns):
        asked.append(netns)
        return {"ready": True, "ike_sas": [], "last_failures": {}}, ""

    def explain(target):
        out = io.StringIO()
        with redirect_stdout(out):
            code = cli.main(["explain", "batch/worker", target, "--standalone", str(state_dir), "--json"])
        return code, json.loads(out.getvalue())

    monkeypatch.setattr(StandaloneSource, "sidecar_status", staticmethod(sidecar_status))
    for target in ("10.48.0.10", "remote/batch/to-east/east/10.48.0.10"):
        code, verdict = await asyncio.to_thread(explain, target)
        assert code == 1 and verdict["reason"] == "no-sa-yet" and verdict["peerings"] == ["batch/to-east"]
        assert verdict["b"] == target and verdict["enforcement"] == "require"
        assert any("bundle of east.example" in d and "fresh" in d and "(2 CA(s))" in d for d in verdict["details"])
    code, verdict = await asyncio.to_thread(explain, "10.99.0.1")
    assert code == 1 and verdict["reason"] == "no-peering"
    assert asked == [None, None, None]  # worker's sidecar only, once per call


def test_bundle_endpoint_yaml_is_checked():
    doc = copy.deepcopy(EAST)
    assert parse_config(doc).bundle_port == 0
    doc["bundleEndpoint"] = {"port": 70000}
    with pytest.raises(StandaloneConfigError, match="bundleEndpoint.port"):
        parse_config(doc)
    doc["bundleEndpoint"] = {"port": 1, "extra": 1}
    with pytest.raises(StandaloneConfigError):
        parse_config(doc)
