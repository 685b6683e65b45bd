"""`ipsec-mesh standalone` as a process: serves, reloads on SIGHUP, stops cleanly on SIGTERM, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ipsec_mesh.meshapi import MeshApiClient
from tests.support.standalone_fixture import MESH, TRUST_DOMAIN, make_csr, write_mesh

ROOT = Path(__file__).resolve().parents[2]


def start_standalone(tmp_path: Path, preexec_fn=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'sidecar'}{os.pathsep}{ROOT / 'operator'}",
           "IPSEC_MESH_KEY_CHECK_INTERVAL": "1h"}
    log = open(tmp_path / "operator.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "ipsec_mesh_operator.main", "standalone", "--config", str(tmp_path / "mesh.yaml"),
         "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0"],
        stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn)
    log.close()
    deadline = time.monotonic() + 60
    while not (tmp_path / "state" / "api-url").exists():
        assert process.poll() is None, (tmp_path / "operator.log").read_text()
        assert time.monotonic() < deadline, "the standalone operator did not start within 60 s"
        time.sleep(0.1)
    return process


def stop_standalone(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        raise


async def test_the_process_reloads_on_sighup_and_keeps_its_ca_across_restarts(tmp_path):
    write_mesh(tmp_path / "mesh.yaml", MESH)
    process = start_standalone(tmp_path)
    try:
        state = tmp_path / "state"
        url = (state / "api-url").read_text().strip()
        bundle = (state / "ca-bundle.pem").read_text()
        async with MeshApiClient(url, ca_bundle=bundle, token_file=state / "pods/shop/web/token") as client:
            issued = await client.sign_csr(make_csr(f"web.shop.pod.{TRUST_DOMAIN}"))
            watch = client.watch_peer_maps(wait=5)
            first = await asyncio.wait_for(watch.__anext__(), 10)
            document = json.loads(json.dumps(MESH))
            document["pods"].append({"name": "db-2", "namespace": "shop", "labels": {"app": "db"},
                                     "ips": ["10.0.0.4"]})
            write_mesh(tmp_path / "mesh.yaml", document)
            process.send_signal(signal.SIGHUP)
            second = await asyncio.wait_for(watch.__anext__(), 15)
            await watch.aclose()
        assert second.version > first.version
        peers = [p.name for policy in second.policies if policy.name == "shop/web-db" for p in policy.peers]
        assert peers == ["shop/db", "shop/db-2"]
        assert (state / "pods/shop/db-2/token").exists()
    finally:
        assert stop_standalone(process) == 0
    assert not (tmp_path / "state" / "api-url").exists()
    process = start_standalone(tmp_path)
    try:
        assert (tmp_path / "state" / "ca-bundle.pem").read_text() == bundle
        assert issued.trust_bundle[0] in bundle
    finally:
        assert stop_standalone(process) == 0


def test_a_bad_file_fails_the_start_naming_the_field(tmp_path):
    document = json.loads(json.dumps(MESH))
    document["pods"][0]["ips"] = ["nope"]
    write_mesh(tmp_path / "mesh.yaml", document)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'sidecar'}{os.pathsep}{ROOT / 'operator'}"}
    result = subprocess.run(
        [sys.executable, "-m", "ipsec_mesh_operator.main", "standalone", "--config", str(tmp_path / "mesh.yaml"),
         "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "pods[0].ips[0]" in result.stderr
    for listen in ("0.0.0.0:8443", "localhost:8443", "127.0.0.1"):
        result = subprocess.run([sys.executable, "-m", "ipsec_mesh_operator.main", "standalone", "--config", "x",
                                 "--state-dir", "y", "--listen", listen], capture_output=True, text=True, env=env,
                                timeout=60)
        assert result.returncode == 2 and "--listen" in result.stderr, listen
