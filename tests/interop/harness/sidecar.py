"""Our sidecar (`ipsec-mesh-sidecar run`) as a process in a test namespace.

Writes a standalone YAML config, starts the process with `ip netns exec`, and reads its
view of the SAs from its status endpoint (127.0.0.1 inside the namespace).
"""
from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import yaml

from ipsec_mesh.meshapi.ports import STATUS_PORT
from ipsec_mesh_operator.netns import stop_process

from .netns import Namespace

REPO = Path(__file__).resolve().parents[3]


def _get_status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
        return json.loads(response.read())


class Sidecar:
    def __init__(self, ns: Namespace, workdir: Path, *, address: str, identity: str, peer_address: str,
                 peer_identity: str, psk: str | None = None, cert_pem: bytes | None = None,
                 key_pem: bytes | None = None, ca_pem: bytes | None = None, ike: str | None = None,
                 esp: str | None = None, lifetimes: dict | None = None, initiate: bool = False,
                 ike_settings: dict | None = None, name: str = "sidecar", dataplane: str = "none",
                 enforcement: str | None = None, addresses: tuple[str, ...] = (),
                 more_peerings: tuple[dict, ...] = (), log_level: str = "debug",
                 env: dict[str, str] | None = None, services: tuple[dict, ...] = ()):
        """`peer_address` is a CIDR (or several, comma-separated); `addresses` adds local
        addresses (e.g. IPv6 beside IPv4) to the one in `address`."""
        self.ns = ns
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "sidecar.log"
        self.process: subprocess.Popen | None = None
        self.extra_env = dict(env or {})
        peering: dict[str, Any] = {
            "name": "interop",
            "peers": [{"name": "charon", "addresses": peer_address.split(","), "identities": [peer_identity]}],
        }
        if enforcement:
            peering["enforcement"] = enforcement
        if psk is not None:
            peering["authentication"] = "psk"
            peering["psk"] = [{"id": "k1", "value": base64.b64encode(psk.encode()).decode()}]
        proposals = {}
        if ike:
            proposals["ike"] = [ike]
        if esp:
            proposals["esp"] = [esp]
        if proposals:
            peering["proposals"] = proposals
        if lifetimes:
            peering["lifetimes"] = lifetimes
        peer_map: dict[str, Any] = {"local": {"identity": identity, "addresses": [address, *addresses]},
                                    "peerings": [peering, *more_peerings], "services": list(services)}
        document: dict[str, Any] = {
            "peerMap": peer_map,
            "dataplane": dataplane,
            "initiate": [peer_address.split("/")[0]] if initiate else [],
            "status": {"listen": f"127.0.0.1:{STATUS_PORT}"},
            "ike": {"retransmitTimeout": 1, "retransmitTries": 3, **(ike_settings or {})},
            "log": {"level": log_level},
        }
        if cert_pem is not None:
            (self.dir / "cert.pem").write_bytes(cert_pem)
            (self.dir / "key.pem").write_bytes(key_pem)
            (self.dir / "key.pem").chmod(0o600)
            document["certificate"] = {"cert": "cert.pem", "key": "key.pem"}
            peer_map["trustBundle"] = [ca_pem.decode()]
        self.config_path = self.dir / "sidecar.yaml"
        self.config_path.write_text(yaml.safe_dump(document))

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 15.0) -> "Sidecar":
        self.launch()
        self.wait_for(lambda s: s["ready"], timeout, "the sidecar to be ready")
        return self

    def launch(self) -> "Sidecar":
        """Start the process without waiting for it (start several, then `wait_ready` each)."""
        out = open(self.log_path, "wb")
        env = {"PYTHONPATH": f"{REPO / 'sidecar'}:{REPO / 'operator'}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               **self.extra_env}
        try:
            self.process = self.ns.popen(self.ns.python_argv("-m", "ipsec_mesh.agent.cli", "run", "--config",
                                                             str(self.config_path)),
                                         stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        finally:
            out.close()
        return self

    def wait_ready(self, timeout: float = 15.0) -> "Sidecar":
        self.wait_for(lambda s: s["ready"], timeout, "the sidecar to be ready")
        return self

    def status(self) -> dict | None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"sidecar exited with {self.process.returncode}:\n{self.log[-3000:]}")
        try:
            return self.ns.call(_get_status, STATUS_PORT, timeout=20)
        except OSError:
            return None

    def wait_for(self, predicate: Callable[[dict], Any], timeout: float = 15.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status is not None:
                result = predicate(status)
                if result:
                    return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last status: {status}\n"
                                   f"log tail:\n{self.log[-3000:]}")
            time.sleep(0.2)

    def established(self, children: int = 1) -> dict:
        def ready(status):
            for sa in status["ike_sas"]:
                installed = [c for c in sa["children"] if c["state"] == "installed"]
                if sa["state"] == "established" and len(installed) >= children:
                    return sa
            return None
        return self.wait_for(ready, what=f"an IKE SA with {children} CHILD_SA(s)")

    def kill(self) -> None:
        """kill -9: no goodbye to peers, no cleanup of kernel state."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process(self.process, sig)
            self.process = None
