"""Fixtures of the deploy tier: the image venvs, a node with an API server, the chart's operator running.

This tier needs root (namespaces, mounts, setpriv) and the package index (the image venvs);
on this machine kind both are there, so it fails rather than skips when they are not.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy import kubelet
from tests.deploy.cluster import (
    ApiServer,
    Node,
    build_image_venvs,
    probe,
    stop,
    tokenreviews,
    wait_until,
    world_readable_tempdir,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ipsec-mesh"
RELEASE, NAMESPACE = "mesh", "ipsec-mesh-system"


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = helm.Chart.load(str(CHART)).render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [doc for path, text in rendered.items() if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def the(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [doc for doc in documents if doc["kind"] == kind]
    return found


@pytest.fixture(scope="session", autouse=True)
def _prerequisites():
    missing = [tool for tool in ("ip", "setpriv", "unshare", "mount") if shutil.which(tool) is None]
    assert os.geteuid() == 0 and not missing, f"the deploy tier needs root and {missing}"


@pytest.fixture(scope="session")
def image_venvs():
    # Not below /tmp: the venv is also mounted at its own path (its scripts' shebangs name it),
    # and the operator's /tmp volume would hide it.
    directory = world_readable_tempdir("ipsec-mesh-deploy-venvs-", "/var/tmp")
    try:
        yield build_image_venvs(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def workdir():
    directory = world_readable_tempdir("ipsec-mesh-deploy-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def node():
    node = Node()
    yield node
    node.close()


@pytest.fixture(scope="session")
def api(node, workdir):
    server = ApiServer(node, workdir)
    server.start(tokenreviews)
    yield server
    server.stop()


def pod_from_template(template: dict[str, Any], name: str, namespace: str, ip: str) -> dict[str, Any]:
    """The pod a ReplicaSet would create from `template`, scheduled and given its IP."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {"serviceAccountName": "default", **template["spec"], "nodeName": "node-0"},
            "status": {"phase": "Pending", "hostIP": "10.244.0.1", "hostIPs": [{"ip": "10.244.0.1"}],
                       "podIP": ip, "podIPs": [{"ip": ip}]}}


@dataclass
class RunningOperator:
    documents: list[dict[str, Any]]
    pod: dict[str, Any]
    container: dict[str, Any]
    netns: str
    ip: str
    process: Any
    log: Path


@pytest.fixture(scope="session")
def operator(node, api, image_venvs, workdir):
    """The chart's operator Deployment (default values), its container started as the kubelet would."""
    documents = render()
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):  # as `helm install` creates them
        plural = kind.lower() + "s"
        api.create(f"/apis/admissionregistration.k8s.io/v1/{plural}", {**the(documents, kind), "metadata": {
            **the(documents, kind)["metadata"], "resourceVersion": "1"}})
    deployment = the(documents, "Deployment")
    netns, ip = node.add_pod()
    pod = pod_from_template(deployment["spec"]["template"], f"{deployment['metadata']['name']}-5d9c7b-x7k2p",
                            NAMESPACE, ip)
    [container] = pod["spec"]["containers"]
    image = kubelet.image_config("operator")
    pod_dir = workdir / "operator-pod"
    pod_dir.mkdir()
    runtime = kubelet.PodRuntime(netns=netns, workdir=pod_dir, image_venv=image_venvs["operator"], volume_sources={
        "kube-api-access": api.service_account_volume(pod_dir / "kube-api-access", NAMESPACE)})
    env = kubelet.resolve_env(pod, container, image, services=api.service_env())
    log = workdir / "operator.log"
    process = kubelet.launch(pod, container, image, runtime, env=env, log=log)
    running = RunningOperator(documents, pod, container, netns, ip, process, log)
    try:
        wait_until("the operator's readiness probe", lambda: probe(node.netns, ip, container,
                                                                   container["readinessProbe"]) == 200,
                   process, log, timeout=90)
        yield running
    finally:
        stop(process)
