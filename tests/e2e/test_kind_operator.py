"""End to end on a kind cluster: build the image, install the chart, peer two pods, see the peering Ready.

Needs Docker, kind, kubectl and helm on PATH; skips otherwise (this machine has
no container engine or registry access). Runs in its own cluster, named with
the pid, deleted afterwards.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSING = [tool for tool in ("docker", "kind", "kubectl", "helm") if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(MISSING), reason=f"kind e2e needs {', '.join(MISSING)} on PATH (not installed here)"),
]

IMAGE = "ipsec-mesh:e2e"


def run(*args, timeout=600, **kwargs):
    return subprocess.run(args, check=True, text=True, capture_output=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    name = f"ipsec-mesh-e2e-{os.getpid()}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run("kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "120s")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    try:
        run("docker", "build", "-t", IMAGE, str(ROOT), timeout=1800)
        run("kind", "load", "docker-image", IMAGE, "--name", name)
        yield env
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", name], timeout=300, check=False)


def kubectl(env, *args, **kwargs):
    return run("kubectl", *args, env=env, **kwargs)


def wait_until(predicate, timeout=300, interval=2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_chart_installs_and_a_peering_becomes_ready(cluster):
    env = cluster
    run("helm", "install", "mesh", str(ROOT / "charts" / "ipsec-mesh"), "-n", "ipsec-mesh-system",
        "--create-namespace", "--set", "image.repository=ipsec-mesh", "--set", "image.tag=e2e",
        "--set", "image.pullPolicy=Never", "--wait", "--timeout", "300s", env=env)
    kubectl(env, "create", "namespace", "shop")
    kubectl(env, "label", "namespace", "shop", "ipsec-mesh.io/inject=enabled")
    for name, app in (("web", "web"), ("db", "db")):
        kubectl(env, "-n", "shop", "run", name, "--image=registry.k8s.io/pause:3.9", f"--labels=app={app}")
    kubectl(env, "apply", "-f", str(ROOT / "docs" / "examples" / "web-db.yaml"))

    def ready():
        out = kubectl(env, "-n", "shop", "get", "ipsecpeering", "web-db", "-o", "json").stdout
        conditions = json.loads(out).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    assert wait_until(ready), kubectl(env, "-n", "shop", "describe", "ipsecpeering", "web-db").stdout
    pod = json.loads(kubectl(env, "-n", "shop", "get", "pod", "web", "-o", "json").stdout)
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == "ipsec-mesh" and sidecar["restartPolicy"] == "Always"
