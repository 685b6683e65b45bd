"""The demo's processes: the standalone operator in the node namespace, a sidecar in each pod.

Both are started exactly as a person would: `ipsec-mesh standalone ...` and
`ipsec-mesh-sidecar mesh` with the environment the operator's injection gives
a pod in a cluster (API URL, token file, CA bundle, POD_*), here pointing at
the standalone operator and the token files it writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..cli.sources import StandaloneSource, read_local_status
from ..controller.index import PodInfo
from ..netns import in_netns, stop_process
from .config import DemoError

API_PORT = 8443
START_TIMEOUT = 600.0  # under software emulation a Python process starts slowly


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment, with the packages this demo was imported from first on the path:
    the operator and sidecars it starts run the same code as the demo itself."""
    import ipsec_mesh
    import ipsec_mesh_operator

    roots = [str(Path(m.__file__).resolve().parent.parent) for m in (ipsec_mesh, ipsec_mesh_operator)]
    path = os.pathsep.join(dict.fromkeys(roots + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(extra or {})}


class Process:
    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(env),
                                            start_new_session=True)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(f"{self.name} exited:\n{self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, grace=15)


class StandaloneOperatorProcess(Process):
    """`ipsec-mesh standalone` in the node namespace, serving the mesh API on the bridge address."""

    def __init__(self, netns: str, address: str, config_path: Path, state_dir: Path, metrics_port: int = 0):
        super().__init__("the standalone operator", state_dir.parent / "operator.log")
        self.netns, self.address = netns, address
        self.config_path, self.state_dir = config_path, state_dir
        self.url = f"https://{address}:{API_PORT}"
        #: 0: any free port (nobody scrapes the demo's operator).
        self.metrics_port = metrics_port

    def start(self) -> None:
        self.spawn(["ip", "netns", "exec", self.netns, sys.executable, "-m", "ipsec_mesh_operator.main", "standalone",
                    "--config", str(self.config_path), "--state-dir", str(self.state_dir),
                    "--listen", f"{self.address}:{API_PORT}", "--metrics-port", str(self.metrics_port)])

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not (self.state_dir / "api-url").exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"the standalone operator did not serve within {timeout:.0f} s:\n{self.log()[-2000:]}")
            time.sleep(0.3)

    @property
    def ca_bundle(self) -> str:
        return (self.state_dir / "ca-bundle.pem").read_text()

    def token_file(self, pod: PodInfo) -> Path:
        return self.state_dir / "pods" / pod.namespace / pod.name / "token"

    def source(self) -> StandaloneSource:
        """What `ipsec-mesh explain --standalone` reads: the admin overview, and each sidecar's local
        /status inside the network namespace the overview names for its pod."""
        return StandaloneSource(self.state_dir)

    def overview(self) -> dict:
        """The admin endpoint, over HTTPS from the node namespace, trusting only the mesh CA."""
        return in_netns(self.netns, self.source().overview)


#: Only what a cluster's sidecar would get from its settings file: the data plane and quick IKE retries.
DEMO_SIDECAR_SETTINGS = {"dataplane": "xfrm", "ike": {"retransmitTimeout": 1, "retransmitTries": 3}}


class Sidecar(Process):
    """`ipsec-mesh-sidecar mesh` in the pod's namespace, bootstrapping from the operator's mesh API."""

    def __init__(self, pod: PodInfo, netns: str, workdir: Path, settings: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(f"the sidecar of {pod.name}", workdir / "sidecar.log")
        self.pod, self.netns, self.dir = pod, netns, workdir
        self.settings = DEMO_SIDECAR_SETTINGS if settings is None else settings

    def start(self, operator: StandaloneOperatorProcess) -> None:
        settings = self.dir / "settings.yaml"
        settings.write_text(yaml.safe_dump(self.settings))
        env = {
            "IPSEC_MESH_API_URL": operator.url,
            "IPSEC_MESH_TOKEN_FILE": str(operator.token_file(self.pod)),
            "IPSEC_MESH_CA_BUNDLE": operator.ca_bundle,
            "IPSEC_MESH_STATUS_INTERVAL": "5s",
            "POD_NAME": self.pod.name,
            "POD_NAMESPACE": self.pod.namespace,
            "POD_IPS": ",".join(self.pod.ips),
        }
        self.spawn(["ip", "netns", "exec", self.netns, sys.executable, "-m", "ipsec_mesh.agent.launch", "mesh",
                    "--settings", str(settings)], env=env)

    def status(self) -> dict | None:
        """The sidecar's /status from its local listener (127.0.0.1:9741 in the pod); None until it answers."""
        self.check_alive()
        return read_local_status(self.netns)[0]
