"""`ipsec-mesh demo` end to end in a kernel with ESP: what it prints, and what it leaves."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.vm


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_demo_shows_esp_only_also_through_the_service_outsider_refused_and_a_rekey():
    before = _namespaces()
    result = subprocess.run([sys.executable, "-m", "ipsec_mesh_operator.main", "demo", "--no-vm"],
                            capture_output=True, text=True, timeout=1500)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # The operator runs standalone on the node's address; each sidecar's certificate came from its API.
    assert "mesh API at https://10.42.0.1:8443" in out
    for pod in ("web", "db", "intruder"):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"✔ {pod} ") and "serial" in line)
        assert "through https://10.42.0.1:8443" in line and "the operator recorded the same serial" in line
    assert "✔ ping web -> db answered" in out
    assert "256 KiB over TCP from web to db arrived intact" in out
    assert "ESP SA  in " in out and "aes256gcm16-esn" in out and "transport" in out
    # web calls db through its Service: the ClusterIP is translated inside web, the call lands on db's pod
    # IP and target port, web's socket still sees the ClusterIP, and only ESP crosses the wire for it.
    assert "✔ web's sidecar translates shop/db in web's pod" in out
    assert ("✔ web asked the Service shop/db at 10.96.0.10:80; db accepted at 10.42.0.11:7000 from 10.42.0.10"
            " and its 256 KiB answer arrived intact; web's socket was connected to 10.96.0.10:80") in out
    service_wire = next(line for line in out.splitlines() if "on the wire next to web during the Service call" in line)
    # e.g. "... : 14 ESP packets between web and db, 0 in plaintext, 0 to or from the ClusterIP 10.96.0.10"
    assert service_wire.endswith(", 0 in plaintext, 0 to or from the ClusterIP 10.96.0.10"), service_wire
    assert int(service_wire.split("call:")[1].split("ESP")[0]) > 0
    assert "0 packets left untranslated" in out
    assert "✔ intruder -> web: no answer" in out
    # web has no policy for intruder (shop never consented to shady's peering): it refuses the IKE.
    assert "✔ web refused" in out
    # The operators' view of both pairs, from `ipsec-mesh explain` against the standalone operator.
    assert "shop/web <-> shop/db: ENCRYPTED" in out
    assert "shady/intruder <-> shop/web: NOT ENCRYPTED (one-sided)" in out
    wire = next(line for line in out.splitlines() if "on the wire next to web" in line)
    # e.g. "... 42 ESP packets and 4 IKE packets between web and db, 0 in plaintext; 0 plaintext ..."
    assert ", 0 in plaintext; 0 plaintext packets between intruder and web" in wire
    assert int(wire.split("web:")[1].split("ESP")[0]) > 0
    assert "✔ rekeyed: inbound SPI" in out and "0 pings lost" in out
    assert "nothing left behind" in out
    assert _namespaces() == before
    for command in ("ipsec_mesh.agent.cli mesh", "ipsec_mesh_operator.main standalone"):
        leftovers = subprocess.run(["pgrep", "-f", command], capture_output=True, text=True)
        assert leftovers.stdout.strip() == "", command
