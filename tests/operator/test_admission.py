"""Admission webhooks over real HTTPS: sidecar injection and peering validation with AdmissionReviews."""

import base64
import copy
import json
import ssl
import uuid

import aiohttp
import jsonpatch
import pytest

from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.server.admission import injection_patch
from tests.support.api_fixture import running_servers


def review(kind, obj, operation="CREATE"):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": kind},
        "operation": operation, "object": obj, "namespace": obj["metadata"].get("namespace"),
    }}


POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web-0", "namespace": "prod", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "app", "image": "nginx"}]},
}


async def post(servers, runtime, path, body):
    context = ssl.create_default_context(cadata="".join(runtime.index.trust_bundle))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://localhost:{servers.ports['webhook']}{path}", json=body,
                                ssl=context) as response:
            return response.status, await response.json()


async def test_pod_injection_over_https_adds_a_locked_down_native_sidecar():
    async with running_servers() as (runtime, servers):
        request = review("Pod", POD)
        status, answer = await post(servers, runtime, "/mutate-pods", request)
    assert status == 200
    response = answer["response"]
    assert response["uid"] == request["request"]["uid"] and response["allowed"]
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(copy.deepcopy(POD), json.loads(base64.b64decode(response["patch"])))
    sidecar = patched["spec"]["initContainers"][0]
    assert sidecar["name"] == "ipsec-mesh" and sidecar["restartPolicy"] == "Always"
    security = sidecar["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/ready"
    token = next(v for v in patched["spec"]["volumes"] if v["name"] == "ipsec-mesh-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "ipsec-mesh"
    assert patched["metadata"]["annotations"]["ipsec-mesh.io/injected"] == "true"
    assert patched["spec"]["containers"] == POD["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["IPSEC_MESH_CA_BUNDLE"].startswith("-----BEGIN CERTIFICATE-----")


def test_injection_keeps_existing_init_containers_volumes_and_sysctls_and_is_idempotent():
    config = OperatorConfig()
    pod = copy.deepcopy(POD)
    pod["metadata"]["annotations"] = {"keep": "me"}
    pod["spec"]["initContainers"] = [{"name": "setup", "image": "busybox"}]
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    pod["spec"]["securityContext"] = {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}
    patched = jsonpatch.apply_patch(pod, injection_patch(pod, config, "PEM"))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["ipsec-mesh", "setup"]
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["data", "ipsec-mesh-token", "ipsec-mesh-run"]
    assert len(patched["spec"]["securityContext"]["sysctls"]) == 2
    assert patched["metadata"]["annotations"]["keep"] == "me"
    assert injection_patch(patched, config, "PEM") == []
    opted_out = copy.deepcopy(POD)
    opted_out["metadata"]["labels"]["ipsec-mesh.io/inject"] = "false"
    assert injection_patch(opted_out, config, "PEM") == []


PEERING = {
    "apiVersion": "ipsec-mesh.io/v1alpha1", "kind": "IPsecPeering",
    "metadata": {"name": "web-db", "namespace": "prod"},
    "spec": {"selector": {"matchLabels": {"app": "web"}}, "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]},
}


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s.update(peers=[]), "list at least one peer"),
    (lambda s: s["peers"][0].update(remote={"name": "x", "cidrs": ["10.0.0.0/8"]}), "exactly one of podSelector"),
    (lambda s: s.update(proposals={"esp": ["3des-sha1"]}), "unsupported algorithm '3des'"),
    (lambda s: s.update(lifetimes={"ike": "30m", "child": "1h"}), "must not be shorter"),
    (lambda s: s.update(authentication={"type": "psk", "pskRotationInterval": "1h", "pskOverlap": "2h"}),
     "pskRotationInterval must be longer"),
    (lambda s: s.update(peers=[{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"]}}]),
     "needs remote.federation"),
    (lambda s: s.update(peers=[{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"], "identities": ["*.east.example"],
                                           "federation": {"endpoint": "http://east:8444/", "trustDomain": "east.example",
                                                          "bootstrapBundle": {"name": "east-ca"}}}}]),
     "must be an https:// URL"),
    (lambda s: s.update(peers=[{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"], "identities": ["*.west.example"],
                                           "federation": {"endpoint": "https://east:8444/", "trustDomain": "east.example",
                                                          "bootstrapBundle": {"name": "east-ca"}}}}]),
     "outside the federated trust domain east.example"),
    (lambda s: s.update(peers=[{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"], "identities": ["*.east.example"],
                                           "trustBundle": {"name": "east-ca"},
                                           "federation": {"endpoint": "https://east:8444/", "trustDomain": "east.example",
                                                          "bootstrapBundle": {"name": "east-ca"}}}}]),
     "not both"),
    (lambda s: s.update(peers=[{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"], "identities": ["*.east.example"],
                                           "federation": {"endpoint": "https://east:8444/", "trustDomain": "east.example",
                                                          "bootstrapBundle": {"name": "east-ca"},
                                                          "refreshInterval": "1s"}}}]),
     "refreshInterval: at least"),
    (lambda s: s.update(peers=[{"remote": {"name": "east", "cidrs": ["10.8.0.1/16"]}}]), "host bits"),
    (lambda s: s.update(selector={"matchExpressions": [{"key": "a", "operator": "In"}]}), "needs at least one value"),
])
async def test_nonsense_peerings_are_rejected_with_an_actionable_message(mutate, expected):
    peering = copy.deepcopy(PEERING)
    mutate(peering["spec"])
    async with running_servers() as (runtime, servers):
        status, answer = await post(servers, runtime, "/validate-ipsecpeerings", review("IPsecPeering", peering))
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert expected in answer["response"]["status"]["message"]


async def test_sensible_peering_is_allowed_and_garbage_reviews_get_400():
    async with running_servers() as (runtime, servers):
        status, answer = await post(servers, runtime, "/validate-ipsecpeerings",
                                    review("IPsecPeering", PEERING, "UPDATE"))
        assert status == 200 and answer["response"]["allowed"] is True
        status, answer = await post(servers, runtime, "/validate-ipsecpeerings", {"request": "nope"})
        assert status == 400


async def test_webhook_serves_a_cert_manager_certificate_when_configured(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "tls.crt").write_bytes(pem)
    (tmp_path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    async with running_servers(webhook_tls_dir=str(tmp_path)) as (runtime, servers):
        context = ssl.create_default_context(cadata=pem.decode())
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://localhost:{servers.ports['webhook']}/validate-ipsecpeerings",
                                    json=review("IPsecPeering", PEERING), ssl=context) as response:
                assert (await response.json())["response"]["allowed"] is True


async def test_one_sided_cross_namespace_peering_is_allowed_with_a_warning_naming_the_namespace():
    from ipsec_mesh_operator.controller.index import PodInfo
    peering = copy.deepcopy(PEERING)
    peering["spec"]["peers"] = [{"podSelector": {"matchLabels": {"app": "api"}},
                                 "namespaceSelector": {"matchLabels": {"team": "b"}}}]
    members = [PodInfo(peering["metadata"]["namespace"], "m-0", "u0", "default",
                       peering["spec"]["selector"].get("matchLabels", {}), ("10.0.0.1",)),
               PodInfo("team-b", "api-0", "u1", "default", {"app": "api"}, ("10.1.0.1",))]
    async with running_servers(members) as (runtime, servers):
        runtime.index.set_namespace_labels("team-b", {"team": "b"})
        status, answer = await post(servers, runtime, "/validate-ipsecpeerings", review("IPsecPeering", peering))
    assert status == 200 and answer["response"]["allowed"] is True
    assert "team-b" in answer["response"]["warnings"][0]


async def test_injected_sidecar_runs_mesh_mode_with_settings_it_can_read():
    """The container's command is the sidecar's mesh mode, and its environment parses as mesh settings."""
    import tomllib
    from pathlib import Path

    from ipsec_mesh.agent.cli import INJECTED_ARGS, main
    from ipsec_mesh.agent.mesh_settings import mesh_settings_from_env

    async with running_servers() as (runtime, servers):
        request = review("Pod", POD)
        _, answer = await post(servers, runtime, "/mutate-pods", request)
    patched = jsonpatch.apply_patch(copy.deepcopy(POD), json.loads(base64.b64decode(answer["response"]["patch"])))
    sidecar = patched["spec"]["initContainers"][0]
    assert sidecar["command"] == ["ipsec-mesh-sidecar", "mesh"] and "args" not in sidecar
    assert sidecar["command"][1:] == INJECTED_ARGS  # the CLI's path without argparse is the one taken
    scripts = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ipsec-mesh-sidecar"] == "ipsec_mesh.agent.launch:main"
    with pytest.raises(SystemExit) as usage:
        main([*sidecar["command"][1:], "--help"])  # the CLI knows the subcommand
    assert usage.value.code == 0
    downward = {"metadata.name": "web-0", "metadata.namespace": "prod", "status.podIPs": "10.0.0.1,fd00::1"}
    env = {e["name"]: e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
           for e in sidecar["env"]}
    settings = mesh_settings_from_env(env)
    assert settings.health_port == sidecar["startupProbe"]["httpGet"]["port"]
    assert settings.health_port == sidecar["livenessProbe"]["httpGet"]["port"]
    assert settings.pod_ips == ("10.0.0.1", "fd00::1")
    assert settings.api_url.startswith("https://") and str(settings.token_file).startswith(
        next(m["mountPath"] for m in sidecar["volumeMounts"] if m["name"] == "ipsec-mesh-token"))


def _pod(mutate):
    pod = copy.deepcopy(POD)
    mutate(pod)
    return pod


@pytest.mark.parametrize("mutate, words", [
    # Claiming to be meshed without the sidecar: the operator would count it, peers would require ESP from it.
    (lambda p: p["metadata"].update(annotations={"ipsec-mesh.io/injected": "true"}),
     "ipsec-mesh.io/injected is set by the injection webhook only"),
    (lambda p: p["spec"]["containers"].append({"name": "ipsec-mesh", "image": "busybox"}),
     "container name ipsec-mesh is reserved"),
    (lambda p: p["spec"].update(initContainers=[{"name": "ipsec-mesh", "image": "busybox"}]),
     "container name ipsec-mesh is reserved"),
    (lambda p: p["spec"].update(securityContext={"sysctls": [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "1024"}]}),
     "net.ipv4.ip_unprivileged_port_start=1024 keeps the sidecar from binding UDP 500"),
    (lambda p: p["spec"].update(securityContext={"sysctls": [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "low"}]}),
     "net.ipv4.ip_unprivileged_port_start"),
    (lambda p: (p["spec"].update(hostNetwork=True), p["metadata"]["labels"].update({"ipsec-mesh.io/inject": "true"})),
     "hostNetwork"),
])
async def test_pods_that_would_be_counted_as_meshed_without_a_working_sidecar_are_refused(mutate, words):
    async with running_servers() as (runtime, servers):
        status, answer = await post(servers, runtime, "/mutate-pods", review("Pod", _pod(mutate)))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False and "patch" not in response
    assert words in response["status"]["message"]


async def test_host_network_pods_of_an_opted_in_namespace_are_left_alone_with_a_warning():
    pod = _pod(lambda p: p["spec"].update(hostNetwork=True))
    async with running_servers() as (runtime, servers):
        status, answer = await post(servers, runtime, "/mutate-pods", review("Pod", pod))
    response = answer["response"]
    assert status == 200 and response["allowed"] is True and "patch" not in response
    assert "hostNetwork" in response["warnings"][0] and "not injected" in response["warnings"][0]


async def test_a_low_unprivileged_port_start_is_kept_and_an_injected_pod_is_not_refused_again():
    config = OperatorConfig()
    pod = _pod(lambda p: p["spec"].update(securityContext={"sysctls": [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "500"}]}))
    patched = jsonpatch.apply_patch(pod, injection_patch(pod, config, "PEM"))
    assert patched["spec"]["securityContext"]["sysctls"] == pod["spec"]["securityContext"]["sysctls"]
    assert injection_patch(patched, config, "PEM") == []  # what the webhook injected is not a forgery


REMOTE_PSK_PEERING = {
    "apiVersion": "ipsec-mesh.io/v1alpha1", "kind": "IPsecPeering",
    "metadata": {"name": "east", "namespace": "prod"},
    "spec": {"selector": {}, "authentication": {"type": "psk"},
             "peers": [{"remote": {"name": "east", "cidrs": ["10.8.0.0/16"],
                                   "pskSecretRef": {"name": "db-credentials", "key": "password"}}}]},
}


def _as(user, peering, operation="CREATE", old=None):
    request = review("IPsecPeering", peering, operation)
    request["request"]["userInfo"] = {"username": user, "uid": f"uid-{user}", "groups": ["system:authenticated"]}
    if old is not None:
        request["request"]["oldObject"] = old
    return request


async def test_a_peering_may_only_reference_secrets_its_author_may_read():
    from ipsec_mesh_operator.controller.kube import Connection, KubeClient
    from tests.support.kube_harness import running_kube
    asked = []

    def subject_access_review(request):
        spec = request.data["spec"]
        asked.append((spec["user"], spec["groups"], spec["resourceAttributes"]))
        allowed = spec["user"] == "alice" and spec["resourceAttributes"]["name"] == "db-credentials"
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec,
                "status": {"allowed": allowed}}

    def setup(emulator):
        emulator["post /apis/authorization.k8s.io/v1/subjectaccessreviews"] << subject_access_review

    with running_kube(setup) as kube:
        async with running_servers() as (runtime, servers):
            await runtime.kube.close()
            runtime.kube = KubeClient(Connection(server=kube.url))
            _, mallory = await post(servers, runtime, "/validate-ipsecpeerings", _as("mallory", REMOTE_PSK_PEERING))
            _, alice = await post(servers, runtime, "/validate-ipsecpeerings", _as("alice", REMOTE_PSK_PEERING))
            # An update that references no new Secret needs no new check (e.g. the operator's own patches).
            _, unchanged = await post(servers, runtime, "/validate-ipsecpeerings",
                                      _as("mallory", REMOTE_PSK_PEERING, "UPDATE", REMOTE_PSK_PEERING))
            runtime.kube = KubeClient(Connection(server="http://127.0.0.1:9"))  # the API server is unreachable
            _, unreachable = await post(servers, runtime, "/validate-ipsecpeerings", _as("alice", REMOTE_PSK_PEERING))
    assert mallory["response"]["allowed"] is False
    assert "mallory may not get Secret prod/db-credentials" in mallory["response"]["status"]["message"]
    assert alice["response"]["allowed"] is True
    assert unchanged["response"]["allowed"] is True
    assert unreachable["response"]["allowed"] is False  # fails closed
    assert asked[0] == ("mallory", ["system:authenticated"],
                        {"namespace": "prod", "verb": "get", "resource": "secrets", "name": "db-credentials"})
    assert len(asked) == 2
@pytest.mark.parametrize("text", ['{"requests": {"memory": "lots"}}', '{"requests": {"gpu": "1"}}', "[]",
                                  '{"requests": {"memory": 64}}', "not json", '{"claims": {}}'])
def test_sidecar_resources_setting_refuses_what_is_not_a_resources_object(text):
    from ipsec_mesh_operator.model.settings import sidecar_resources

    with pytest.raises(ValueError, match="IPSEC_MESH_SIDECAR_RESOURCES"):
        sidecar_resources(text)


def test_a_federation_bootstrap_secret_is_a_secret_reference_the_author_must_be_allowed_to_read():
    from ipsec_mesh_operator.server.admission import _secret_refs
    peering = copy.deepcopy(PEERING)
    peering["spec"]["peers"] = [{"remote": {
        "name": "east", "cidrs": ["10.8.0.0/16"], "identities": ["*.east.example"],
        "federation": {"endpoint": "https://east:8444/spiffe/v1/bundle", "trustDomain": "east.example",
                       "bootstrapBundle": {"kind": "Secret", "name": "db-credentials"}}}}]
    assert _secret_refs(peering) == {"db-credentials"}
