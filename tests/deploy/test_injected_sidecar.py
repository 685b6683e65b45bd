"""The admission webhook's patched pod: its sidecar run exactly as specified, against the chart's operator.

The pod is the one docs/install.md shows. The real webhook (the operator's, over HTTPS,
verified with the caBundle the operator patched into its webhook configuration) patches it;
the sidecar then starts from the slim sidecar image's venv with the env, uid, capabilities,
projected token, volumes and pod sysctls of the patch, in the pod's network namespace, and
bootstraps from the operator's mesh API (reached by the Service name, which the pod's
/etc/hosts resolves as cluster DNS would) until its startup probe answers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import uuid
from http.client import HTTPResponse
from pathlib import Path

import jsonpatch
import pytest
import yaml

from ipsec_mesh_operator.netns import in_netns
from tests.deploy.cluster import probe, proc_status, stop, wait_until
from tests.deploy.conftest import the
from tests.deploy.kubelet import PodRuntime, Security, image_config, launch, port_number, resolve_env, security
from tests.support import fake_tokens

ROOT = Path(__file__).resolve().parents[2]
DB_IP = "10.244.0.250"  # a peer pod that only exists in the API server: policies for it are what we look for
NET_ADMIN = 1 << 12


def docs_pod() -> dict:
    blocks = re.findall(r"^```yaml\n(.*?)^```", (ROOT / "docs" / "install.md").read_text(), re.S | re.M)
    [pod] = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc and doc.get("kind") == "Pod"]
    return pod


def call_webhook(node_netns: str, operator, api, path: str, review: dict) -> dict:
    """What the API server does: POST to the webhook's Service, verifying it with the configuration's caBundle."""
    documents = operator.documents
    config = the(documents, "MutatingWebhookConfiguration")
    service_ref = config["webhooks"][0]["clientConfig"]["service"]
    service = the(documents, "Service")
    [port] = [p for p in service["spec"]["ports"] if p["port"] == service_ref["port"]]
    target = port_number(operator.container, port["targetPort"])
    name = f"{service_ref['name']}.{service_ref['namespace']}.svc"
    body = json.dumps(review).encode()
    live = api.get(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{config['metadata']['name']}")
    bundle = base64.b64decode(live["webhooks"][0]["clientConfig"]["caBundle"]).decode()  # the operator patched it in

    def post():
        context = ssl.create_default_context(cadata=bundle)
        with socket.create_connection((operator.ip, target), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"POST {path} HTTP/1.1\r\nHost: {name}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            response = HTTPResponse(tls)
            response.begin()
            assert response.status == 200, response.read()
            return json.loads(response.read())
    return in_netns(node_netns, post, timeout=20)


def inject(node, operator, api, name: str, ip: str, labels: dict | None = None) -> dict:
    pod = docs_pod()
    pod["metadata"] = {**pod["metadata"], "name": name, "uid": str(uuid.uuid4())}
    if labels is not None:
        pod["metadata"]["labels"] = labels
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": pod["metadata"]["namespace"],
        "operation": "CREATE", "object": pod}}
    response = call_webhook(node.netns, operator, api, "/mutate-pods", review)["response"]
    assert response["allowed"] and response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    patched["spec"].setdefault("serviceAccountName", "default")
    patched["status"] = {"phase": "Pending", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.244.0.1"}
    namespace = patched["metadata"]["namespace"]
    api.create(f"/api/v1/namespaces/{namespace}/pods", {**patched, "metadata": {
        **patched["metadata"], "resourceVersion": "1"}})
    return patched


@pytest.fixture(scope="module")
def shop(node, api, operator):
    """The docs' web-db peering and a db pod for it, in the API server."""
    peering = yaml.safe_load((ROOT / "docs" / "examples" / "web-db.yaml").read_text())
    namespace = peering["metadata"]["namespace"]
    api.create(f"/apis/ipsec-mesh.io/v1alpha1/namespaces/{namespace}/ipsecpeerings",
               {**peering, "metadata": {**peering["metadata"], "uid": str(uuid.uuid4()), "generation": 1,
                                        "resourceVersion": "1"}})
    # Injected by the webhook like web: the operator meshes only pods that run its sidecar.
    inject(node, operator, api, "db", DB_IP, labels={"app": "db"})
    return namespace


def run_sidecar(node, operator, api, image_venvs, workdir, name: str, *, as_user: int | None = None,
                ambient: bool = False):
    """Inject pod `name` and start its sidecar; `as_user` replaces the uid (the non-root experiment)."""
    netns, ip = node.add_pod()
    patched = inject(node, operator, api, name, ip)
    [sidecar] = [c for c in patched["spec"]["initContainers"] if c["name"] == "ipsec-mesh"]
    [token_volume] = [v for v in patched["spec"]["volumes"] if "projected" in v]
    [source] = token_volume["projected"]["sources"]
    request = source["serviceAccountToken"]
    pod_dir = workdir / f"pod-{name}"
    (pod_dir / "token").mkdir(parents=True)
    meta = patched["metadata"]
    (pod_dir / "token" / request["path"]).write_text(fake_tokens.issue(  # what the kubelet's TokenRequest returns
        meta["namespace"], patched["spec"]["serviceAccountName"], meta["name"], meta["uid"],
        audience=request["audience"], lifetime=request["expirationSeconds"]))
    service = the(operator.documents, "Service")["metadata"]
    hosts = f"127.0.0.1 localhost\n{operator.ip} {service['name']}.{service['namespace']}.svc\n"
    image = image_config("sidecar")
    override = None
    if as_user is not None:
        specified = security(patched, sidecar, image)
        override = Security(**{**specified.__dict__, "uid": as_user, "gid": as_user})
    runtime = PodRuntime(netns=netns, workdir=pod_dir, image_venv=image_venvs["sidecar"],
                         volume_sources={token_volume["name"]: pod_dir / "token"}, hosts=hosts)
    log = workdir / f"sidecar-{name}.log"
    process = launch(patched, sidecar, image, runtime, env=resolve_env(patched, sidecar, image), log=log,
                     security_override=override, ambient=ambient)
    return patched, sidecar, netns, ip, process, log


def xfrm_policies(netns: str) -> str:
    return subprocess.run(["ip", "-n", netns, "xfrm", "policy"], capture_output=True, text=True, check=True).stdout


def test_webhook_patched_sidecar_runs_as_specified_until_ready(node, operator, api, image_venvs, workdir, shop):
    patched, sidecar, netns, ip, process, log = run_sidecar(node, operator, api, image_venvs, workdir, "web")
    try:
        wait_until("the sidecar's startup probe", lambda: probe(node.netns, ip, sidecar, sidecar["startupProbe"]) == 200,
                   process, log, timeout=60)
        assert probe(node.netns, ip, sidecar, sidecar["livenessProbe"]) == 200
        status = proc_status(process.pid)
        assert status["Uid"].split()[0] == "0" and status["NoNewPrivs"].strip() == "1"
        assert int(status["CapEff"], 16) == NET_ADMIN and int(status["CapBnd"], 16) == NET_ADMIN
        assert status["THP_enabled"].strip() == "0"  # no huge pages for a sidecar (agent/heap.py)
        # What the kernel holds, not what was asked: policies for the db peer in the pod's namespace.
        assert DB_IP in xfrm_policies(netns) and ip in xfrm_policies(netns)
        assert open(f"/proc/{process.pid}/cmdline").read().split("\0")[1:3] == [
            "/opt/ipsec-mesh/bin/ipsec-mesh-sidecar", "mesh"]  # found on the image's PATH
        # The chart's values reached the injection: the slim image and the measured resources.
        values = yaml.safe_load((ROOT / "charts" / "ipsec-mesh" / "values.yaml").read_text())["sidecar"]
        assert sidecar["image"] == f"{values['image']['repository']}:0.1.0" and sidecar["resources"] == values["resources"]
        assert patched["spec"]["securityContext"]["sysctls"] == [
            {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    finally:
        stop(process)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert DB_IP in xfrm_policies(netns)  # SIGTERM keeps the policies: fail closed (docs/sidecar.md)



def test_non_root_sidecar_gets_no_capability_from_kubernetes_and_fails_closed(node, operator, api, image_venvs,
                                                                                workdir, shop):
    """runAsUser 65532 with capabilities.add NET_ADMIN, as containerd starts it: the capability stays in the
    bounding set only (no ambient capabilities in Kubernetes), so the XFRM data plane is refused."""
    _, sidecar, netns, ip, process, log = run_sidecar(node, operator, api, image_venvs, workdir, "web-nonroot",
                                                      as_user=65532)
    try:
        code = process.wait(60)
    finally:
        stop(process)
    status_code = probe(node.netns, ip, sidecar, sidecar["startupProbe"])
    text = log.read_text()
    assert code != 0 and status_code != 200, text[-3000:]
    assert "Operation not permitted" in text or "EPERM" in text or "permission" in text.lower(), text[-3000:]
    assert DB_IP not in xfrm_policies(netns)


def test_non_root_sidecar_with_ambient_net_admin_runs(node, operator, api, image_venvs, workdir, shop):
    """With NET_ADMIN ambient (what a runtime would need to grant a non-root uid) everything the sidecar does
    works: XFRM netlink, UDP 500/4500 under the pod's ip_unprivileged_port_start=0, the per-socket bypass."""
    _, sidecar, netns, ip, process, log = run_sidecar(node, operator, api, image_venvs, workdir, "web-ambient",
                                                      as_user=65532, ambient=True)
    try:
        wait_until("the non-root sidecar's startup probe",
                   lambda: probe(node.netns, ip, sidecar, sidecar["startupProbe"]) == 200, process, log, timeout=60)
        status = proc_status(process.pid)
        assert status["Uid"].split()[0] == "65532" and int(status["CapEff"], 16) == NET_ADMIN
        assert DB_IP in xfrm_policies(netns)
        sockets = subprocess.run(["ip", "netns", "exec", netns, "ss", "-uanp"], capture_output=True, text=True).stdout
        assert f"{ip}:500 " in sockets and f"{ip}:4500 " in sockets, sockets
    finally:
        stop(process)


def test_non_root_sidecar_with_a_file_capability_on_its_interpreter_runs(node, operator, api, image_venvs, workdir,
                                                                         shop):
    """The route Kubernetes does allow: `setcap cap_net_admin+ep` on the interpreter, runAsUser 65532,
    capabilities.add NET_ADMIN (keeps it in the bounding and permitted sets), allowPrivilegeEscalation false.
    no_new_privs does not block a file capability the process already may hold."""
    capped = workdir / "sidecar-venv-filecap"
    shutil.copytree(image_venvs["sidecar"], capped, symlinks=True)
    interpreter = capped / "bin" / "python3"
    interpreter.unlink()
    shutil.copy2(os.path.realpath(image_venvs["sidecar"] / "bin" / "python3"), interpreter)
    subprocess.run(["setcap", "cap_net_admin+ep", str(interpreter)], check=True)
    script = capped / "bin" / "ipsec-mesh-sidecar"
    script.write_text(re.sub(r"^#!.*", f"#!{capped}/bin/python", script.read_text(), count=1))
    _, sidecar, netns, ip, process, log = run_sidecar(node, operator, api, {"sidecar": capped}, workdir,
                                                      "web-filecap", as_user=65532)
    try:
        wait_until("the file-capability sidecar's startup probe",
                   lambda: probe(node.netns, ip, sidecar, sidecar["startupProbe"]) == 200, process, log, timeout=60)
        status = proc_status(process.pid)
        assert status["Uid"].split()[0] == "65532" and status["NoNewPrivs"].strip() == "1"
        assert int(status["CapEff"], 16) == NET_ADMIN and int(status["CapAmb"], 16) == 0
        assert DB_IP in xfrm_policies(netns)
    finally:
        stop(process)
