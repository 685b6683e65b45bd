"""The chart's operator Deployment, run as the kubelet would run it, from the image's venv, against kmock."""

from __future__ import annotations

import base64
import re

from tests.deploy.cluster import installed, probe, proc_status, stop, wait_until
from tests.deploy.conftest import NAMESPACE, RELEASE, the
from tests.deploy.kubelet import PodRuntime, image_config, launch, resolve_env


def test_operator_runs_as_the_charts_non_root_uid_without_a_passwd_entry(operator):
    status = proc_status(operator.process.pid)
    assert status["Uid"].split()[:2] == ["65532", "65532"] and status["Gid"].split()[:2] == ["65532", "65532"]
    assert status["Groups"].split() == ["65532"]  # fsGroup
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0  # drop: ["ALL"]
    assert status["NoNewPrivs"].strip() == "1"  # allowPrivilegeEscalation: false
    with open("/etc/passwd") as passwd:
        assert not re.search(r"^[^:]*:[^:]*:65532:", passwd.read(), re.M)


def test_operator_answers_its_probes_as_the_chart_writes_them(operator, node):
    container = operator.container
    assert probe(node.netns, operator.ip, container, container["livenessProbe"]) == 200
    assert probe(node.netns, operator.ip, container, container["readinessProbe"]) == 200


def test_operator_did_its_startup_work_in_the_api_server(operator, api):
    """The mesh CA Secret exists and the webhook configurations carry the CA bundle (caBundle patched)."""
    ca = api.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/ipsec-mesh-ca")  # values: ca.secretName
    assert ca is not None and {"ca.crt", "ca.key"} <= set(ca["data"])
    bundle = base64.b64decode(ca["data"]["ca.crt"])
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        config = api.get(f"/apis/admissionregistration.k8s.io/v1/{kind}/{RELEASE}-ipsec-mesh")
        assert all(base64.b64decode(hook["clientConfig"]["caBundle"]) == bundle for hook in config["webhooks"])


def test_operator_image_venv_holds_exactly_the_locked_packages(image_venvs):
    from tests.chart.test_dockerfile import _lock

    for role, venv in image_venvs.items():
        packages = installed(venv)
        assert "pip" not in packages and "setuptools" not in packages, role  # removed after the build
        assert packages.pop("ipsec-mesh") == "0.1.0"
        assert packages == {name: version for name, (version, _) in _lock(role).items()}, role


def test_the_readonly_root_is_read_only(operator, node):
    """Outside its volumes the operator's filesystem refuses writes, as readOnlyRootFilesystem does."""
    container = operator.container
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = open(f"/proc/{operator.process.pid}/mounts").read().splitlines()
    root = [line.split() for line in mounts if line.split()[1] == "/"]
    assert root and "ro" in root[-1][3].split(","), root
    tmp = [line.split() for line in mounts if line.split()[1] == "/tmp"]
    assert tmp and tmp[-1][2] == "tmpfs" and "rw" in tmp[-1][3].split(",")
    assert the(operator.documents, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["name"] == "tmp"


def test_operator_starts_without_pod_id_too(operator, node, api, image_venvs, workdir):
    """The operator alone (POD_ID unset: an older chart, a hand-written manifest) survives a uid without passwd entry."""
    container = operator.container
    env = {k: v for k, v in resolve_env(operator.pod, container, image_config("operator"),
                                        services=api.service_env()).items() if k != "POD_ID"}
    netns, ip = node.add_pod()
    pod_dir = workdir / "operator-without-pod-id"
    pod_dir.mkdir()
    runtime = PodRuntime(netns=netns, workdir=pod_dir, image_venv=image_venvs["operator"], volume_sources={
        "kube-api-access": api.service_account_volume(pod_dir / "kube-api-access", NAMESPACE)})
    log = workdir / "operator-without-pod-id.log"
    process = launch(operator.pod, container, image_config("operator"), runtime, env=env, log=log)
    try:
        wait_until("readiness without POD_ID", lambda: probe(node.netns, ip, container,
                                                             container["readinessProbe"]) == 200, process, log, 90)
        assert "POD_ID" not in env and proc_status(process.pid)["Uid"].split()[0] == "65532"
    finally:
        stop(process)
