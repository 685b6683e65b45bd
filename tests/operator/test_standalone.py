"""The standalone operator over real HTTPS on loopback, with the sidecar's MeshApiClient."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import stat
import time

import aiohttp
import pytest
import yaml
from cryptography import x509

from ipsec_mesh.meshapi import MeshApiClient, MeshApiRequestError
from ipsec_mesh_operator.cli.sources import StandaloneSource
from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.standalone import TokenAuthority
from ipsec_mesh_operator.standalone.tokens import PREFIX
from tests.support.standalone_fixture import MESH, TRUST_DOMAIN, client_for, make_csr, running, write_mesh

WEB_ID = f"web.shop.pod.{TRUST_DOMAIN}"


async def test_a_pod_gets_a_certificate_naming_exactly_its_identity_and_its_peer_map(tmp_path):
    async with running(tmp_path) as operator:
        async with client_for(operator, "shop", "web") as client:
            issued = await client.sign_csr(make_csr(WEB_ID))
            cert = x509.load_pem_x509_certificate(issued.certificate.encode())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.DNSName) == [WEB_ID]
            assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
                f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/web"]
            assert tuple(issued.trust_bundle) == tuple(operator.runtime.index.trust_bundle)
            peer_map = await client.fetch_peer_map()
        assert peer_map.local.identity == WEB_ID
        policies = {policy.name: policy for policy in peer_map.policies}
        assert set(policies) == {"shop/web-db", "shop/web-cache"}
        assert [p.name for p in policies["shop/web-db"].peers] == ["shop/db"]
        assert [p.identities for p in policies["shop/web-db"].peers] == [(f"db.shop.pod.{TRUST_DOMAIN}",)]
        assert len(policies["shop/web-cache"].psk_keys) == 1
        # The serving certificate names the listen IP: the client above verified it against ca-bundle.pem.
        for path in [operator.token_path("shop", "web"), operator.state_dir / "admin-token",
                     operator.state_dir / "token-signing.key", *operator.state_dir.glob("secrets/*/*.json")]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_another_pods_token_cannot_get_its_certificate(tmp_path):
    async with running(tmp_path) as operator:
        async with client_for(operator, "shop", "db") as client:
            with pytest.raises(MeshApiRequestError) as error:
                await client.sign_csr(make_csr(WEB_ID))
            assert error.value.status == 400 and "identity" in str(error.value)
            assert (await client.fetch_peer_map()).local.identity == f"db.shop.pod.{TRUST_DOMAIN}"


def _tampered(token: str) -> str:
    payload, signature = token[len(PREFIX):].split(".")
    claims = json.loads(_unb64(payload))
    claims["pod"] = "web"
    forged = _b64(json.dumps(claims).encode())
    return f"{PREFIX}{forged}.{signature}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_tampered_expired_wrong_audience_and_foreign_tokens_are_refused(tmp_path):
    async with running(tmp_path) as operator:
        db_token = operator.token_path("shop", "db").read_text()
        web = operator.runtime.index.pod(("shop", "web"))
        authority = operator.authority
        clock_now = operator.runtime.clock()
        expired = TokenAuthority(authority._key, authority._pods, clock=lambda: clock_now - 7200).issue(
            web, "ipsec-mesh", 3600)
        other_key = TokenAuthority(os.urandom(32), authority._pods).issue(web, "ipsec-mesh", 3600)
        ghost = PodInfo("shop", "ghost", "uid", "default", {}, ("10.0.0.9",))
        cases = {
            "tampered": _tampered(db_token),
            "expired": expired,
            "wrong audience": authority.issue(web, "kubernetes", 3600),
            "other key": other_key,
            "no such pod": authority.issue(ghost, "ipsec-mesh", 3600),
            "garbage": "ims1.%%%.!!!",
        }
        url = (operator.state_dir / "api-url").read_text().strip()
        bundle = (operator.state_dir / "ca-bundle.pem").read_text()
        for what, token in cases.items():
            async with MeshApiClient(url, ca_bundle=bundle, token=lambda t=token: t) as client:
                with pytest.raises(MeshApiRequestError) as error:
                    await client.sign_csr(make_csr(WEB_ID))
                assert error.value.status == 401, what


async def test_restart_keeps_the_ca_the_psks_and_the_tokens(tmp_path):
    async with running(tmp_path) as operator:
        bundle = (operator.state_dir / "ca-bundle.pem").read_text()
        psk = operator.runtime.psk[("shop", "web-cache")].keys(operator.runtime.clock())
        token = operator.token_path("shop", "web").read_text()
        key = (operator.state_dir / "token-signing.key").read_bytes()
    async with running(tmp_path) as operator:
        assert (operator.state_dir / "ca-bundle.pem").read_text() == bundle
        assert operator.runtime.psk[("shop", "web-cache")].keys(operator.runtime.clock()) == psk
        assert (operator.state_dir / "token-signing.key").read_bytes() == key
        # A token issued before the restart still works (kubelet would not have renewed it yet).
        url = (operator.state_dir / "api-url").read_text().strip()
        async with MeshApiClient(url, ca_bundle=bundle, token=lambda: token) as client:
            assert (await client.fetch_peer_map()).local.identity == WEB_ID


async def test_reload_adds_and_removes_a_pod_and_the_watch_sees_it(tmp_path):
    async with running(tmp_path) as operator:
        async with client_for(operator, "shop", "web") as client:
            watch = client.watch_peer_maps(wait=5)
            first = await asyncio.wait_for(watch.__anext__(), 10)
            db_policy = next(p for p in first.policies if p.name == "shop/web-db")
            assert [p.name for p in db_policy.peers] == ["shop/db"]
            document = json.loads(json.dumps(MESH))
            document["pods"] = [p for p in document["pods"] if p["name"] != "db"]
            document["pods"].append({"name": "db-2", "namespace": "shop", "labels": {"app": "db"},
                                     "ips": ["10.0.0.4"]})
            write_mesh(operator.config_path, document)
            os.kill(os.getpid(), signal.SIGHUP)
            second = await asyncio.wait_for(watch.__anext__(), 10)
            await watch.aclose()
        assert second.version > first.version
        db_policy = next(p for p in second.policies if p.name == "shop/web-db")
        assert [p.name for p in db_policy.peers] == ["shop/db-2"]
        assert operator.token_path("shop", "db-2").exists()
        assert not operator.token_path("shop", "db").exists()
        # The removed pod's old token no longer authenticates (its pod is gone).
        assert operator.runtime.index.pod(("shop", "db")) is None


async def test_services_in_the_yaml_reach_the_maps_and_follow_a_reload(tmp_path):
    document = json.loads(json.dumps(MESH))
    document["services"] = [
        {"name": "db", "namespace": "shop", "clusterIPs": ["10.96.0.10"], "selector": {"app": "db"},
         "ports": [{"name": "pg", "port": 5432, "targetPort": 5433}]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "both", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.0.11", "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": "both-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "both"}},
         "ports": [{"name": "http", "port": 8080}],
         "endpoints": [{"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"], "conditions": {"ready": False}}]},
    ]

    def listed(operator):
        return {s.key: [(str(e.address), e.port, e.ready, e.peer) for p in s.ports for e in p.endpoints]
                for s in operator.runtime.index.peer_map(("shop", "web")).services}

    async with running(tmp_path, document) as operator:
        assert listed(operator) == {"shop/db": [("10.0.0.2", 5433, True, True)],
                                    "shop/both": [("10.0.0.2", 8080, True, True), ("10.0.0.3", 8080, False, True)]}
        async with client_for(operator, "shop", "web") as client:  # what the sidecar gets, over HTTPS
            assert [s.key for s in (await client.fetch_peer_map()).services] == ["shop/both", "shop/db"]
        # The admin overview carries the objects, for `ipsec-mesh explain POD svc/NS/NAME --standalone`.
        doc = await asyncio.to_thread(StandaloneSource(operator.state_dir).overview)
        assert sorted((e["kind"], e["object"]["metadata"]["name"]) for e in doc["services"]) == [
            ("EndpointSlice", "both-1"), ("EndpointSlice", "db-ipv4"), ("Service", "both"), ("Service", "db")]
        document["services"] = document["services"][:1]
        write_mesh(operator.config_path, document)
        assert await operator.reload() is True
        assert listed(operator) == {"shop/db": [("10.0.0.2", 5433, True, True)]}


async def test_a_bad_reload_changes_nothing(tmp_path):
    async with running(tmp_path) as operator:
        before = operator.runtime.index.version(("shop", "web"))
        operator.config_path.write_text(yaml.safe_dump({"pods": [], "peerings": [{"name": "x"}]}))
        assert await operator.reload() is False
        assert operator.runtime.index.version(("shop", "web")) == before
        assert operator.runtime.index.pod(("shop", "db")) is not None


async def test_removing_a_psk_peering_deletes_its_secret(tmp_path):
    async with running(tmp_path) as operator:
        secret = operator.state_dir / "secrets" / "shop" / "web-cache-psk.json"
        assert secret.exists()
        document = json.loads(json.dumps(MESH))
        document["peerings"] = document["peerings"][:1]
        write_mesh(operator.config_path, document)
        assert await operator.reload() is True
        assert not secret.exists()
        assert [p.name for p in operator.runtime.index.peer_map(("shop", "web")).policies] == ["shop/web-db"]


async def test_admin_overview_needs_the_admin_token(tmp_path):
    document = json.loads(json.dumps(MESH))
    document["pods"][0]["netns"] = "ns-web"  # passed on for explain, which reads /status inside it
    async with running(tmp_path, document) as operator:
        async with client_for(operator, "shop", "web") as client:
            await client.sign_csr(make_csr(WEB_ID))
        url = (operator.state_dir / "api-url").read_text().strip() + "/v1/admin/overview"
        context = ssl.create_default_context(cadata=(operator.state_dir / "ca-bundle.pem").read_text())
        admin = (operator.state_dir / "admin-token").read_text().strip()
        pod_token = operator.token_path("shop", "web").read_text()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            for header in ({}, {"Authorization": f"Bearer {pod_token}"}, {"Authorization": f"Bearer {admin}x"}):
                async with session.get(url, headers=header) as response:
                    assert response.status == 401
            async with session.get(url, headers={"Authorization": f"Bearer {admin}"}) as response:
                assert response.status == 200
                body = await response.json()
    pods = {f"{p['namespace']}/{p['name']}": p for p in body["pods"]}
    assert pods["shop/web"]["identity"] == WEB_ID
    assert pods["shop/web"]["certificate"]["issuer"].startswith("ipsec-mesh CA")
    assert pods["shop/db"]["certificate"] is None
    assert pods["shop/web"]["netns"] == "ns-web" and pods["shop/db"]["netns"] is None
    peerings = {p["name"]: p for p in body["peerings"]}
    assert peerings["web-db"]["members"] == ["shop/web"] and peerings["web-db"]["peers"] == ["shop/db"]
    assert peerings["web-cache"]["pskKeyId"]
    assert "psk-" not in json.dumps(body) and "PRIVATE" not in json.dumps(body)


async def test_maintenance_rotates_psk_and_ca_on_schedule_and_renews_tokens(tmp_path):
    now = [time.time()]
    document = json.loads(json.dumps(MESH))
    document["peerings"][1]["spec"]["authentication"].update(pskRotationInterval="2h", pskOverlap="1h")
    base = OperatorConfig(key_check_interval=3600, ca_rotation_interval=3 * 3600, ca_propagation=600)
    async with running(tmp_path, document, base=base, clock=lambda: now[0]) as operator:
        async with client_for(operator, "shop", "web") as client:
            first = next(p for p in (await client.fetch_peer_map()).policies if p.name == "shop/web-cache")
            token_before = operator.token_path("shop", "web").read_text()
            bundle_before = (operator.state_dir / "ca-bundle.pem").read_text()
            await operator.maintain()  # nothing is due yet
            assert operator.token_path("shop", "web").read_text() == token_before
            now[0] += 3 * 3600 + 1
            await operator.maintain()
            second = next(p for p in (await client.fetch_peer_map()).policies if p.name == "shop/web-cache")
        assert {k.id for k in first.psk_keys} < {k.id for k in second.psk_keys}
        assert operator.token_path("shop", "web").read_text() != token_before
        bundle_after = (operator.state_dir / "ca-bundle.pem").read_text()
        assert bundle_after.count("BEGIN CERTIFICATE") == 2 and bundle_before in bundle_after
        stored = json.loads((operator.state_dir / "secrets" / "shop" / "web-cache-psk.json").read_text())
        assert len([key for key in stored["data"] if key.startswith("psk-")]) == 2


async def test_a_new_service_account_on_reload_means_a_new_token(tmp_path):
    async with running(tmp_path) as operator:
        unchanged = operator.token_path("shop", "db").read_text()
        old = operator.token_path("shop", "web").read_text()
        document = json.loads(json.dumps(MESH))
        document["pods"][0]["serviceAccount"] = "frontend"
        write_mesh(operator.config_path, document)
        assert await operator.reload() is True
        assert operator.token_path("shop", "db").read_text() == unchanged
        assert operator.token_path("shop", "web").read_text() != old
        async with client_for(operator, "shop", "web") as client:
            issued = await client.sign_csr(make_csr(WEB_ID))
        cert = x509.load_pem_x509_certificate(issued.certificate.encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/frontend"]


async def _status_with(operator, token):
    url = (operator.state_dir / "api-url").read_text().strip()
    bundle = (operator.state_dir / "ca-bundle.pem").read_text()
    async with MeshApiClient(url, ca_bundle=bundle, token=lambda: token) as client:
        try:
            await client.fetch_peer_map()
        except MeshApiRequestError as error:
            return error.status
        return 200


def _mesh_with_db(ip=None, labels=None):
    document = json.loads(json.dumps(MESH))
    db = next(p for p in document["pods"] if p["name"] == "db")
    if ip is None:
        document["pods"].remove(db)
    else:
        db.update(ips=[ip], labels=labels or db["labels"])
    return document


async def test_a_removed_pods_token_never_works_for_a_new_pod_of_the_same_name(tmp_path):
    async with running(tmp_path) as operator:
        stolen = operator.token_path("shop", "db").read_text()
        assert await _status_with(operator, stolen) == 200
        write_mesh(operator.config_path, _mesh_with_db())
        assert await operator.reload() is True
        assert await _status_with(operator, stolen) == 503  # its pod is not in the mesh
        write_mesh(operator.config_path, _mesh_with_db("10.0.0.9", {"app": "db", "tier": "new"}))
        assert await operator.reload() is True
        # 403 while the authenticator still caches the review (the uid is not the new pod's), 401 after.
        assert await _status_with(operator, stolen) in (401, 403)
        assert await _status_with(operator, operator.token_path("shop", "db").read_text()) == 200
        # The same pod through reloads that do not touch it keeps its uid, so its token keeps working.
        current = operator.token_path("shop", "db").read_text()
        assert await operator.reload() is True
        assert await _status_with(operator, current) == 200


async def test_a_removed_pods_token_stays_dead_across_restarts(tmp_path):
    async with running(tmp_path) as operator:
        stolen = operator.token_path("shop", "db").read_text()
    write_mesh(tmp_path / "mesh.yaml", _mesh_with_db())
    async with running(tmp_path) as operator:
        assert await _status_with(operator, stolen) == 401
    write_mesh(tmp_path / "mesh.yaml", _mesh_with_db("10.0.0.2"))  # back, even at the same address
    async with running(tmp_path) as operator:
        assert await _status_with(operator, stolen) == 401
        kept = operator.token_path("shop", "db").read_text()
    async with running(tmp_path) as operator:  # an unchanged pod keeps its incarnation across a restart
        assert await _status_with(operator, kept) == 200
    write_mesh(tmp_path / "mesh.yaml", _mesh_with_db("10.0.0.7"))  # edited while stopped: a new pod
    async with running(tmp_path) as operator:
        assert await _status_with(operator, kept) == 401
