"""`ipsec-mesh-sidecar mesh` against the real operator mesh API on loopback (fake tokens, data plane none)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from ipsec_mesh.agent.mesh_settings import MeshSettingsError, mesh_settings_from_env
from ipsec_mesh_operator.model.peering import parse_peering
from ipsec_mesh_operator.pki.ca import CertificateAuthority
from tests.support.api_fixture import running_servers
from tests.support.mesh_sidecar_helpers import (
    IKE_PORT,
    api_url,
    ca_bundle,
    http_get,
    mesh_sidecar,
    pod,
    settings_for,
    wait_for,
    write_token,
)

ROOT = Path(__file__).resolve().parents[2]
WEB = pod("web-0", "web", 2)
DB = pod("db-0", "db", 3)
CACHE = pod("cache-0", "db", 4)
PEERING = parse_peering("prod", "p", {"selector": {"matchLabels": {"app": "web"}},
                                      "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]})


async def test_bootstrap_to_ready_with_an_issued_certificate(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_servers([WEB, DB]) as (runtime, servers):
        runtime.index.upsert_peering(PEERING)
        async with mesh_sidecar(settings_for(runtime, servers, WEB, tmp_path)) as sidecar:
            agent, port = sidecar.agent, sidecar.health.port
            assert agent.ready and agent.peers.local_addresses == WEB.ips
            assert agent.peers.entry_for(DB.ips[0]).policy.name == "prod/p"
            leaf = sidecar.credential.chain[0]
            assert list(leaf.subject_alt_names.dns) == [agent.peers.peer_map.local.identity]
            assert leaf.public_key() == sidecar.credential.private_key.public_key()
            assert (await http_get("127.0.0.1", port, "/ready"))[0] == 200
            assert (await http_get("127.0.0.1", port, "/healthz"))[0] == 200
            # The pod-facing health port tells the pod network nothing about identities, peers,
            # SPIs or certificates (issue 10): /status is only on the local listener.
            assert (await http_get("127.0.0.1", port, "/status"))[0] == 404
            code, metrics = await http_get("127.0.0.1", port, "/metrics")
            assert code == 200 and b"ipsec_mesh_ike_sas" in metrics
            assert not any(ip.encode() in metrics for ip in WEB.ips + DB.ips)
            local = sidecar.local_status.port  # IPSEC_MESH_STATUS_LISTEN: everything, plus /readyz
            assert (await http_get("127.0.0.1", local, "/readyz"))[0] == 200
            code, body = await http_get("127.0.0.1", local, "/status")
            status = json.loads(body)
            assert code == 200 and status["mesh"]["applied_version"] == agent.peers.peer_map.version
            assert status["identity"] == str(agent.peers.local_id)
            assert status["mesh"]["certificate"]["serial"] == f"{leaf.serial_number:x}"
            assert status["last_failures"] == {} and status["clock"] is not None  # contract C
            await wait_for(lambda: ("prod", "web-0") in runtime.reports, what="first status report")
            report = runtime.reports[("prod", "web-0")][1]
            assert report.applied_version == agent.peers.peer_map.version
            assert [p.name for p in report.peerings] == ["prod/p"]
        key_der = sidecar.credential.private_key.private_numbers().private_value.to_bytes(32, "big").hex()
        assert key_der not in caplog.text and "PRIVATE KEY" not in caplog.text


async def test_peer_map_changes_reach_the_running_agent(tmp_path):
    async with running_servers([WEB, DB]) as (runtime, servers):
        async with mesh_sidecar(settings_for(runtime, servers, WEB, tmp_path)) as sidecar:
            agent = sidecar.agent
            assert agent.peers.entry_for(DB.ips[0]) is None  # no peering yet
            runtime.index.upsert_peering(PEERING)
            await wait_for(lambda: agent.peers.entry_for(DB.ips[0]) is not None, what="peering applied")
            runtime.index.upsert_pod(CACHE)  # a pod added
            await wait_for(lambda: agent.peers.entry_for(CACHE.ips[0]) is not None, what="new pod applied")
            runtime.index.remove_pod(DB.key)  # a pod removed
            await wait_for(lambda: agent.peers.entry_for(DB.ips[0]) is None, what="removed pod gone")
            assert agent.peers.entry_for(CACHE.ips[0]) is not None
            assert agent.dataplane.peers is agent.peers  # the data plane followed
            assert agent.peers.peer_map.version == runtime.index.version(WEB.key)


async def test_two_mesh_sidecars_establish_with_issued_certificates_and_report(tmp_path):
    async with running_servers([WEB, DB]) as (runtime, servers):
        runtime.index.upsert_peering(PEERING)
        async with mesh_sidecar(settings_for(runtime, servers, DB, tmp_path)) as db, \
                mesh_sidecar(settings_for(runtime, servers, WEB, tmp_path, initiate=DB.ips)) as web:
            await wait_for(lambda: web.agent.dataplane.outbound and db.agent.dataplane.outbound, what="CHILD SAs")
            assert set(web.agent.dataplane.outbound) == set(db.agent.dataplane.inbound)
            ike = web.agent.endpoint.status()[0]
            assert ike["state"] == "established" and ike["remote_id"].endswith(db.agent.peers.peer_map.local.identity)

            def reported(pod_key) -> int:
                entry = runtime.reports.get(pod_key)
                return entry[1].peerings[0].established_sas if entry and entry[1].peerings else 0

            await wait_for(lambda: reported(WEB.key) == 1 and reported(DB.key) == 1, what="reports with SAs")
            assert runtime.health(("prod", "p")).established_sas == 1  # members' SAs, as the peering shows
            # The peer leaves the mesh: its SAs go at once, the peer hears an INFORMATIONAL delete.
            runtime.index.remove_pod(DB.key)
            await wait_for(lambda: not web.agent.dataplane.inbound and not web.agent.endpoint.status(),
                           what="SAs of the removed peer deleted")
            await wait_for(lambda: not db.agent.dataplane.inbound, what="peer told by a delete")
            await wait_for(lambda: reported(WEB.key) == 0, what="report after the removal")


async def test_certificate_renewal_keeps_the_sas(tmp_path):
    async with running_servers([WEB, DB], max_cert_lifetime=4) as (runtime, servers):
        runtime.index.upsert_peering(PEERING)
        async with mesh_sidecar(settings_for(runtime, servers, DB, tmp_path)), \
                mesh_sidecar(settings_for(runtime, servers, WEB, tmp_path, initiate=DB.ips)) as web:
            await wait_for(lambda: web.agent.dataplane.outbound, what="CHILD SA")
            label = web.agent.endpoint.status()[0]["ike_sa"]
            first = web.credential
            assert first.not_after - first.received_at <= 5
            await wait_for(lambda: web.credential is not first, timeout=10, what="renewal")
            renewed = web.credential
            assert renewed.serial != first.serial
            assert renewed.private_key.public_key() != first.private_key.public_key()  # a new key
            config = web.agent.peers.lookup(WEB.ips[0], DB.ips[0])
            assert config.credential.leaf == renewed.chain[0]  # new IKE SAs use the new certificate
            assert [sa["ike_sa"] for sa in web.agent.endpoint.status()] == [label]  # nothing dropped
            assert web.agent.dataplane.outbound


async def test_an_unusable_peer_map_is_reported_and_the_old_one_stays(tmp_path):
    async with running_servers([WEB, DB]) as (runtime, servers):
        runtime.index.upsert_peering(PEERING)
        async with mesh_sidecar(settings_for(runtime, servers, WEB, tmp_path)) as sidecar:
            applied = sidecar.agent.peers.peer_map
            bad = applied.__class__(applied.version + 1, applied.local.__class__("other-0.prod.pod.cluster.local",
                                                                                  "other-0", "prod"),
                                    applied.policies, applied.trust_bundle)
            assert not sidecar.apply_peer_map(bad)
            assert sidecar.agent.peers.peer_map is applied

            def last_error() -> str:
                entry = runtime.reports.get(WEB.key)
                return entry[1].peerings[0].last_error if entry else ""

            await wait_for(lambda: "not applied" in last_error(), what="refusal reported")
            assert "POD_NAME" in last_error()
            assert runtime.reports[WEB.key][1].applied_version == applied.version


async def test_failed_peers_and_the_last_error_are_reported_until_the_peer_comes_up(tmp_path):
    async with running_servers([WEB, DB]) as (runtime, servers):
        runtime.index.upsert_peering(PEERING)
        # One IKE_SA_INIT, no retransmission: DB's sidecar is not running yet, so it times out in 1 s.
        settings = settings_for(runtime, servers, WEB, tmp_path, initiate=DB.ips, retransmit_tries=0)
        async with mesh_sidecar(settings) as web:

            def peering():
                entry = runtime.reports.get(WEB.key)
                return entry[1].peerings[0] if entry and entry[1].peerings else None

            await wait_for(lambda: peering() is not None and peering().failed_peers == 1, what="failure reported")
            assert peering().last_error == "no response to IKE_SA_INIT" and peering().established_sas == 0
            async with mesh_sidecar(settings_for(runtime, servers, DB, tmp_path)):
                web.agent.initiate(DB.ips[0])
                await wait_for(lambda: peering().established_sas == 1, what="SA reported")
                assert peering().failed_peers == 0 and peering().last_error == ""


async def test_a_new_trust_bundle_reaches_the_api_client(tmp_path):
    async with running_servers([WEB, DB]) as (runtime, servers):
        async with mesh_sidecar(settings_for(runtime, servers, WEB, tmp_path)) as sidecar:
            context = sidecar.client._ssl
            extra = CertificateAuthority.create(time.time(), 3600, 86400).trust_bundle(time.time())
            runtime.index.set_trust_bundle(runtime.index.trust_bundle + extra)  # a CA rotation begins
            await wait_for(lambda: sidecar.client._ssl is not context, what="TLS trust updated")
            assert len(sidecar.agent.peers.peer_map.trust_bundle) == 2
            runtime.index.upsert_peering(PEERING)  # the API is still trusted over the new context
            await wait_for(lambda: sidecar.agent.peers.entry_for(DB.ips[0]) is not None, what="later map")
            assert sidecar.mesh_status()["last_error"] == ""


async def test_a_busy_health_port_is_a_configuration_error(tmp_path):
    import dataclasses
    import socket

    from ipsec_mesh.agent.bootstrap import BootstrapError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        async with running_servers([WEB]) as (runtime, servers):
            settings = dataclasses.replace(settings_for(runtime, servers, WEB, tmp_path),
                                           health_port=busy.getsockname()[1])
            with pytest.raises(BootstrapError) as error:
                async with mesh_sidecar(settings):
                    pass
    assert error.value.exit_code == 2 and "IPSEC_MESH_HEALTH_PORT" in str(error.value)


def cli_env(runtime, servers, token_file: Path, health_port: int = 0) -> dict[str, str]:
    return {"IPSEC_MESH_API_URL": api_url(servers), "IPSEC_MESH_TOKEN_FILE": str(token_file),
            "IPSEC_MESH_CA_BUNDLE": ca_bundle(runtime), "IPSEC_MESH_HEALTH_PORT": str(health_port),
            "IPSEC_MESH_HEALTH_HOST": "127.0.0.1", "IPSEC_MESH_WATCH_WAIT": "1", "POD_NAME": WEB.name,
            "IPSEC_MESH_STATUS_LISTEN": "off", "IPSEC_MESH_DATAPLANE": "none",
            "POD_NAMESPACE": WEB.namespace, "POD_IPS": ",".join(WEB.ips)}


async def start_cli(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ipsec_mesh.agent.cli", "mesh", *args,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{ROOT / 'sidecar'}:{ROOT / 'operator'}", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, stderr.decode()


async def test_the_cli_command_gets_ready_and_stops_cleanly_on_sigterm(tmp_path):
    import signal
    import socket

    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(f"ike: {{port: {IKE_PORT}, nattPort: {IKE_PORT + 1}}}\nlog: {{format: json}}\n")
    with socket.socket() as probe:  # a free port for the health server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with running_servers([WEB, DB]) as (runtime, servers):
        runtime.index.upsert_peering(PEERING)
        process = await start_cli(cli_env(runtime, servers, write_token(tmp_path, WEB), port),
                                  "--settings", str(settings_file))
        try:
            async def ready() -> bool:
                try:
                    return (await http_get("127.0.0.1", port, "/ready"))[0] == 200
                except OSError:
                    return False

            deadline = asyncio.get_running_loop().time() + 20
            while not await ready():
                assert process.returncode is None and asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
            await wait_for(lambda: WEB.key in runtime.reports, what="report from the CLI sidecar")
            process.send_signal(signal.SIGTERM)
        finally:
            code, stderr = await finish(process)
    assert code == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]  # log.format json from the settings file
    assert any("bootstrapped from the mesh API" in line["message"] for line in lines)


@pytest.mark.parametrize("token", ["wrong-audience", "forged"])
async def test_a_refused_token_fails_clearly_with_exit_code_3(tmp_path, token):
    async with running_servers([WEB]) as (runtime, servers):
        if token == "wrong-audience":
            path = write_token(tmp_path, WEB, audience="kubernetes")
        else:
            path = write_token(tmp_path, WEB, key=b"not the signing key")
        code, stderr = await finish(await start_cli(cli_env(runtime, servers, path)))
        assert code == 3, stderr
        assert "mesh API refused fetching the first peer map" in stderr and "HTTP 401" in stderr
        assert "Traceback" not in stderr


def test_settings_errors_name_the_variable(tmp_path):
    pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    env = {"IPSEC_MESH_API_URL": "https://op:8443", "IPSEC_MESH_TOKEN_FILE": "/t", "IPSEC_MESH_CA_BUNDLE": pem}
    defaults = mesh_settings_from_env(env)
    assert (defaults.health_port, defaults.status_listen, defaults.sidecar.dataplane) == (
        15021, ("127.0.0.1", 9741), "xfrm")
    (tmp_path / "ca.pem").write_text(pem)
    from_file = {**env, "IPSEC_MESH_CA_BUNDLE": "", "IPSEC_MESH_CA_BUNDLE_FILE": str(tmp_path / "ca.pem")}
    assert mesh_settings_from_env(from_file).ca_bundle == pem
    changed = mesh_settings_from_env({**env, "IPSEC_MESH_STATUS_LISTEN": "off", "IPSEC_MESH_DATAPLANE": "none"})
    assert changed.status_listen is None and changed.sidecar.dataplane == "none"
    for name, value in (("IPSEC_MESH_API_URL", ""), ("IPSEC_MESH_API_URL", "http://op"),
                        ("IPSEC_MESH_CA_BUNDLE", "junk"), ("IPSEC_MESH_CA_BUNDLE", ""),
                        ("IPSEC_MESH_HEALTH_PORT", "http"), ("IPSEC_MESH_HEALTH_PORT", "70000"),
                        ("POD_IPS", "10.0.0.1,nope"), ("IPSEC_MESH_STATUS_INTERVAL", "soon"),
                        ("IPSEC_MESH_STATUS_LISTEN", "localhost:9741"), ("IPSEC_MESH_DATAPLANE", "dpdk")):
        with pytest.raises(MeshSettingsError) as error:
            mesh_settings_from_env({**env, name: value})
        assert error.value.variable == name and name in str(error.value)
    with pytest.raises(MeshSettingsError, match="IPSEC_MESH_CA_BUNDLE_FILE: cannot read"):
        mesh_settings_from_env({**from_file, "IPSEC_MESH_CA_BUNDLE_FILE": str(tmp_path / "absent.pem")})
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("dataplane: none\nike: {port: 1500}\nlog: {format: json}\n")
    settings = mesh_settings_from_env({**env, "IPSEC_MESH_STATUS_INTERVAL": "5"}, str(settings_file))
    assert (settings.sidecar.dataplane, settings.sidecar.ike.port, settings.status_interval) == ("none", 1500, 5)
    settings_file.write_text("peerMap: {}\n")  # standalone-only keys are refused
    with pytest.raises(Exception, match="peerMap"):
        mesh_settings_from_env(env, str(settings_file))
