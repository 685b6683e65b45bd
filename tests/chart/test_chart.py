"""The Helm chart, rendered and linted by the real Helm engine, manifests checked with kubernetes-validate --strict."""

import filecmp
import json
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from ipsec_mesh_operator.model.services import MAX_ENDPOINT_SLICES_PER_NAMESPACE, MAX_SERVICES_PER_NAMESPACE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ipsec-mesh"
KUBE_VERSION = "1.30.0"
NAMESPACE = "ipsec-mesh-system"

OPTIONS = {
    "defaults": {},
    "no-webhooks": {"webhook": {"enabled": False}},
    "webhook-ignore": {"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 5}},
    "cert-manager": {"webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}},
    "ha": {"replicaCount": 2, "peering": {"enabled": True, "name": "mesh"}},
    "ha-mode": {"ha": {"enabled": True}},
    "ha-strict": {"replicaCount": 3, "ha": {"antiAffinity": "required", "pdb": {"minAvailable": 2}},
                  "priorityClassName": "system-cluster-critical"},
    "webhook-per-policy": {"webhook": {"inject": {"failurePolicy": "Ignore"}, "validate": {"failurePolicy": "Fail"},
                                       "excludeNamespaces": ["kube-system", "monitoring"]}},
    "names": {"nameOverride": "mesh-ipsec", "fullnameOverride": "ipsec"},
    "knobs": {"podLabels": {"team": "net"}, "serviceAccount": {"annotations": {"iam/role": "x"}},
              "sidecar": {"resources": {"limits": {"memory": "64Mi"}}},
              "services": {"maxPerNamespace": 150, "maxEndpointSlicesPerNamespace": 600},
              "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}},
    "pinned-digest": {"image": {"repository": "registry.example/ipsec-mesh", "digest": "sha256:" + "a" * 64}},
    "no-metrics": {"metrics": {"enabled": False}},
    "secret-namespaces": {"rbac": {"secretNamespaces": ["shop", "payments", NAMESPACE]}},
    "network-policy-cidrs": {"networkPolicy": {"apiServerCIDRs": ["172.18.0.0/16", "fd00::/64"],
                                               "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                                                   "kubernetes.io/metadata.name": "monitoring"}}}]}},
    "no-network-policy": {"networkPolicy": {"enabled": False}},
    "sidecar": {"sidecar": {"image": {"repository": "registry.example/sidecar", "digest": "sha256:" + "b" * 64},
                            "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}}}},
    "bundle-endpoint": {"bundleEndpoint": {"enabled": True, "port": 9444, "refreshHint": "2m", "service": {
        "type": "LoadBalancer", "annotations": {"lb/internal": "true"}, "loadBalancerSourceRanges": ["198.51.100.0/24"]}}},
    "custom": {"trustDomain": "mesh.example.org", "tokenAudience": "mesh", "logFormat": "plain",
               "nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": [{"operator": "Exists"}],
               "priorityClassName": "system-cluster-critical", "podAnnotations": {"a": "b"},
               "imagePullSecrets": [{"name": "regcred"}]},
}
# Kinds whose schemas are CRDs outside Kubernetes itself (kubernetes-validate cannot check them).
THIRD_PARTY_KINDS = {"Certificate", "ClusterKopfPeering", "ServiceMonitor"}


def render(values):
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="mesh", namespace=NAMESPACE, is_install=True)
    documents = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return documents, rendered


def by_kind(documents, kind):
    return [doc for doc in documents if doc["kind"] == kind]


def test_chart_crds_are_the_single_source():
    # Ours is kept in one place; kopf's peering CRD is kopf's (see test_ha_option_...).
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["ipsecpeerings.yaml", "kopf-peering.yaml"]
    assert filecmp.cmp(CHART / "crds" / "ipsecpeerings.yaml", ROOT / "crds" / "ipsecpeerings.yaml", shallow=False)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_chart_renders_lints_and_validates_strictly(option):
    values = OPTIONS[option]
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    documents, _ = render(values)
    assert documents
    for document in documents:
        if document["kind"] in THIRD_PARTY_KINDS:
            continue
        kubernetes_validate.validate(document, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("path", [ROOT / "crds" / "ipsecpeerings.yaml", CHART / "crds" / "kopf-peering.yaml"],
                         ids=["ipsecpeerings", "kopf-peering"])
def test_crd_validates_as_a_kubernetes_object(path):
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), KUBE_VERSION, strict=True)


def test_default_deployment_is_locked_down():
    documents, _ = render({})
    deployment = by_kind(documents, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert "--standalone" in container["args"] and "ipsec_mesh_operator.handlers" in container["args"]
    assert container["image"] == "ghcr.io/ipsec-mesh/ipsec-mesh:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["IPSEC_MESH_SERVICE_NAME"] == "mesh-ipsec-mesh-operator"
    assert env["IPSEC_MESH_WEBHOOK_CONFIGS"] == "mesh-ipsec-mesh"
    # The operator's names in the chart match what the webhook configurations and Service use.
    service = by_kind(documents, "Service")[0]
    assert service["metadata"]["name"] == env["IPSEC_MESH_SERVICE_NAME"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        config = by_kind(documents, kind)[0]
        assert config["metadata"]["name"] == env["IPSEC_MESH_WEBHOOK_CONFIGS"]
        for webhook in config["webhooks"]:
            assert webhook["clientConfig"]["service"]["name"] == service["metadata"]["name"]
            assert webhook["failurePolicy"] == "Fail"


def test_rbac_is_least_privilege():
    documents, _ = render({})
    rules = by_kind(documents, "ClusterRole")[0]["rules"]
    verbs = {(group, resource): set(rule["verbs"])
             for rule in rules for group in rule["apiGroups"] for resource in rule["resources"]}
    assert verbs[("", "secrets")] == {"get", "create", "patch"}
    assert verbs[("", "pods")] == {"get", "list", "watch"}
    assert verbs[("", "services")] == verbs[("discovery.k8s.io", "endpointslices")] == {"list", "watch"}
    assert verbs[("authentication.k8s.io", "tokenreviews")] == {"create"}
    assert verbs[("authorization.k8s.io", "subjectaccessreviews")] == {"create"}  # the webhook's Secret check
    assert all("*" not in v for v in verbs.values()) and all("delete" not in v for v in verbs.values())
    webhook_rule = next(r for r in rules if "admissionregistration.k8s.io" in r["apiGroups"])
    assert webhook_rule["resourceNames"] == ["mesh-ipsec-mesh"]


@pytest.mark.parametrize("values", [{}, {"ha": {"enabled": True}, "ca": {"secretName": "team-ca"}}])
def test_every_replica_may_watch_the_ca_secret_and_no_other(values):
    """The CA Secret's watch (any replica may rotate the CA): list/watch of that one Secret, in the
    release namespace only, granted to the operator's ServiceAccount; cluster-wide Secrets stay unlisted."""
    documents, _ = render(values)
    name = values.get("ca", {}).get("secretName", "ipsec-mesh-ca")
    [role] = [r for r in by_kind(documents, "Role") if any("secrets" in rule["resources"] for rule in r["rules"])]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name],
                              "verbs": ["list", "watch"]}]
    [binding] = [b for b in by_kind(documents, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    account = by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    cluster = by_kind(documents, "ClusterRole")[0]["rules"]
    assert not any({"list", "watch"} & set(r["verbs"]) for r in cluster if "secrets" in r["resources"])
    # The operator watches exactly what the Role names: the Secret it is configured with.
    env = {e["name"]: e.get("value") for e in
           by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IPSEC_MESH_CA_SECRET"] == name


def _secret_rules(role):
    return [r for r in role["rules"] if "secrets" in r["resources"]]


def test_secrets_are_cluster_wide_only_while_no_namespace_is_listed():
    """Default: get/create/patch on Secrets everywhere, because each PSK Secret (and each Secret a
    peering names) lives beside its peering, which may be in any namespace. With
    rbac.secretNamespaces, nothing cluster-wide: a Role in each listed namespace, and in the release
    namespace only the CA Secret by name (plus create, which RBAC cannot restrict by name)."""
    documents, _ = render({})
    [rule] = _secret_rules(by_kind(documents, "ClusterRole")[0])
    assert set(rule["verbs"]) == {"get", "create", "patch"} and "resourceNames" not in rule
    assert "IPSEC_MESH_SECRET_NAMESPACES" not in _env(documents)

    listed = ["shop", "payments", NAMESPACE]
    documents, _ = render({"rbac": {"secretNamespaces": listed}})
    assert not _secret_rules(by_kind(documents, "ClusterRole")[0])
    account = _pod_spec(documents)["serviceAccountName"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind(documents, "Role")}
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]): b for b in by_kind(documents, "RoleBinding")}
    for namespace in listed:
        [role] = [r for (ns, name), r in roles.items() if ns == namespace and name.endswith("-secrets")]
        assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]}]
        binding = bindings[(namespace, role["metadata"]["name"])]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    [ca_role] = [r for (ns, name), r in roles.items() if ns == NAMESPACE and not name.endswith("-secrets")]
    assert _secret_rules(ca_role) == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ipsec-mesh-ca"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ipsec-mesh-ca"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    assert len([r for r in roles.values() if _secret_rules(r)]) == len(listed) + 1  # nothing anywhere else
    # The operator knows, so that a peering elsewhere is told why instead of failing on a 403.
    assert _env(documents)["IPSEC_MESH_SECRET_NAMESPACES"] == ",".join(listed)


def test_cert_manager_option_swaps_ca_management():
    documents, _ = render(OPTIONS["cert-manager"])
    certificate = by_kind(documents, "Certificate")[0]
    webhook = by_kind(documents, "MutatingWebhookConfiguration")[0]
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{NAMESPACE}/{certificate['metadata']['name']}"
    container = by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert any(e["name"] == "IPSEC_MESH_WEBHOOK_TLS_DIR" for e in container["env"])
    rules = by_kind(documents, "ClusterRole")[0]["rules"]
    assert not any("admissionregistration.k8s.io" in r["apiGroups"] for r in rules)


def test_ha_option_ships_what_kopf_peering_needs():
    documents, rendered = render(OPTIONS["ha"])
    deployment = by_kind(documents, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=mesh" in args and "--all-namespaces" in args and "--standalone" not in args
    assert "kopf peering" in rendered["ipsec-mesh/templates/NOTES.txt"]
    # --all-namespaces makes kopf use the cluster-scoped kind: its CRD (crds/) and the named object.
    crd = yaml.safe_load((CHART / "crds" / "kopf-peering.yaml").read_text())
    names, version = crd["spec"]["names"], crd["spec"]["versions"][0]
    assert (crd["spec"]["group"], version["name"], crd["spec"]["scope"]) == ("kopf.dev", "v1", "Cluster")
    assert (names["kind"], names["plural"]) == ("ClusterKopfPeering", "clusterkopfpeerings")
    assert crd["metadata"]["name"] == f"{names['plural']}.{crd['spec']['group']}"
    [peering] = by_kind(documents, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["metadata"]["name"] == "mesh"
    assert "namespace" not in peering["metadata"]
    # kopf writes keep-alives into the object's status: the schema must keep what it writes.
    keepalive = {"status": {"op-1": {"priority": 5, "lifetime": 60, "lastseen": "2026-11-27T14:00:00"}}}
    assert _schema_errors(version["schema"]["openAPIV3Schema"], {**peering, **keepalive}) == []
    assert _schema_errors(version["schema"]["openAPIV3Schema"], {**peering, "spec": {}})  # a closed schema
    # RBAC: list/watch all peering objects, get/patch only ours.
    rules = [r for r in by_kind(documents, "ClusterRole")[0]["rules"] if "kopf.dev" in r["apiGroups"]]
    assert {(tuple(r.get("resourceNames", ())), tuple(sorted(r["verbs"]))) for r in rules} == {
        ((), ("list", "watch")), (("mesh",), ("get", "patch"))}
    assert all(r["resources"] == ["clusterkopfpeerings"] for r in rules)
    # Without peering: none of it.
    documents, _ = render({})
    assert not by_kind(documents, "ClusterKopfPeering")
    assert not any("kopf.dev" in r["apiGroups"] for r in by_kind(documents, "ClusterRole")[0]["rules"])


def _schema_errors(schema, obj):
    """The object checked against a CRD's structural schema (apiVersion/kind/metadata are the API server's)."""
    import jsonschema

    from ipsec_mesh_operator.model.crd import (
        _json_schema,  # OpenAPI to JSON Schema, as for our own CRs  # OpenAPI to JSON Schema, as for our own CRs
    )
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    return [e.message for e in jsonschema.Draft7Validator(_json_schema(schema)).iter_errors(body)]


def _policy_rules(values):
    documents, _ = render(values)
    policies = by_kind(documents, "NetworkPolicy")
    if not policies:
        return None, documents
    [policy] = policies
    return {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}, documents


def test_network_policy_lets_meshed_pods_reach_the_api_and_the_api_server_the_webhooks():
    rules, documents = _policy_rules({})
    policy = by_kind(documents, "NetworkPolicy")[0]
    deployment = by_kind(documents, "Deployment")[0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert set(rules) <= ports
    assert rules["mesh-api"] == [
        {"namespaceSelector": {"matchLabels": {"ipsec-mesh.io/inject": "enabled"}}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"ipsec-mesh.io/inject": "true"}}}]
    assert rules["webhook"] is None  # the API server's address is the cluster's: open unless told
    rules, _ = _policy_rules(OPTIONS["network-policy-cidrs"])
    cidrs = [{"ipBlock": {"cidr": "172.18.0.0/16"}}, {"ipBlock": {"cidr": "fd00::/64"}}]
    assert rules["webhook"] == cidrs and rules["mesh-api"][2:] == cidrs
    assert rules["liveness"] == OPTIONS["network-policy-cidrs"]["networkPolicy"]["metricsFrom"]
    assert "webhook" not in _policy_rules(OPTIONS["no-webhooks"])[0]
    assert _policy_rules(OPTIONS["no-network-policy"])[0] is None


def test_connection_bounds_reach_the_operator():
    documents, _ = render({"api": {"maxConnections": 10000, "idleTimeout": "30s"}})
    container = by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["IPSEC_MESH_MAX_CONNECTIONS"] == "10000" and env["IPSEC_MESH_IDLE_TIMEOUT"] == "30s"
    assert env["IPSEC_MESH_HANDSHAKE_TIMEOUT"] == "5s" and env["IPSEC_MESH_MAX_REQUESTS_PER_POD"] == "8"
    assert env["IPSEC_MESH_DEAD_CLIENT_TIMEOUT"] == "30s"


def test_no_webhooks_option_leaves_them_out():
    documents, rendered = render(OPTIONS["no-webhooks"])
    assert not by_kind(documents, "MutatingWebhookConfiguration")
    assert "WARNING" in rendered["ipsec-mesh/templates/NOTES.txt"]


@pytest.mark.parametrize("values", [
    {"ha": {"antiAffinity": "sometimes"}},
    {"webhook": {"inject": {"failurePolicy": "Maybe"}}},
    {"webhook": {"failurePolicy": "Sometimes"}},
    {"image": {"repository": "x", "digest": "latest"}},
    {"sidecar": {"image": {"repository": "x"}, "resources": {"requests": {"memory": "lots"}}}},
    {"sidecar": {"image": {"repository": "x"}, "resources": {"requests": {"gpu": "1"}}}},
    {"ca": {"rotationInterval": "a year"}},
    {"webhook": {"certManager": {"enabled": True}}},            # no issuer
    {"unknownKey": 1},
    {"networkPolicy": {"apiServerCIDRs": ["the api server"]}},
    {"api": {"maxConnections": 0}},
    {"services": {"maxPerNamespace": 0}},
    {"bundleEndpoint": {"service": {"type": "ExternalName"}}},
    {"bundleEndpoint": {"port": 0}},
])
def test_values_schema_rejects_nonsense(values):
    with pytest.raises(helm.HelmError):
        render(values)


def test_sidecar_image_and_resources_reach_the_injected_sidecar(monkeypatch):
    from ipsec_mesh_operator.model.settings import OperatorConfig
    from ipsec_mesh_operator.server.admission import sidecar_container

    for values, image, resources in (
        ({}, "ghcr.io/ipsec-mesh/ipsec-mesh-sidecar:0.1.0",
         {"requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}}),
        (OPTIONS["sidecar"], "registry.example/sidecar@sha256:" + "b" * 64, OPTIONS["sidecar"]["sidecar"]["resources"]),
    ):
        documents, _ = render(values)
        container = by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "ghcr.io/ipsec-mesh/ipsec-mesh:0.1.0"  # the operator's own stays
        for item in container["env"]:
            if "value" in item:
                monkeypatch.setenv(item["name"], item["value"])
        sidecar = sidecar_container(OperatorConfig.from_env(), "")
        assert sidecar["image"] == image and sidecar["resources"] == resources


def test_values_schema_is_json_and_documents_every_default_key():
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) <= set(schema["properties"])


def _pod_spec(documents):
    return by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]


def _env(documents):
    return {e["name"]: e.get("value") for e in _pod_spec(documents)["containers"][0]["env"]}


@pytest.mark.parametrize("values", [{"replicaCount": 2}, {"ha": {"enabled": True}}], ids=["replicas", "ha-enabled"])
def test_ha_mode_keeps_a_serving_replica_through_upgrades_and_drains(values):
    documents, rendered = render(values)
    deployment = by_kind(documents, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    selector = deployment["spec"]["selector"]["matchLabels"]
    [pdb] = by_kind(documents, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    pod = _pod_spec(documents)
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}
    [priority] = by_kind(documents, "PriorityClass")
    assert pod["priorityClassName"] == priority["metadata"]["name"] and priority["value"] > 0
    # kopf peering elects the writer; without it two replicas would both write.
    assert "--peering=ipsec-mesh" in pod["containers"][0]["args"]
    assert by_kind(documents, "ClusterKopfPeering")
    assert "HA mode" in rendered["ipsec-mesh/templates/NOTES.txt"]


def test_ha_mode_knobs_and_single_replica_has_none_of_it():
    documents, _ = render(OPTIONS["ha-strict"])
    pod = _pod_spec(documents)
    assert by_kind(documents, "Deployment")[0]["spec"]["replicas"] == 3
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pod["priorityClassName"] == "system-cluster-critical" and not by_kind(documents, "PriorityClass")
    assert by_kind(documents, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 2
    documents, _ = render({})
    assert not by_kind(documents, "PodDisruptionBudget") and not by_kind(documents, "PriorityClass")
    assert "affinity" not in _pod_spec(documents) and "priorityClassName" not in _pod_spec(documents)
    assert by_kind(documents, "Deployment")[0]["spec"]["strategy"] == {"type": "Recreate"}


def test_name_override_renames_every_object_and_keeps_them_consistent():
    documents, _ = render({"nameOverride": "ipsec"})
    names = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert ("Deployment", "mesh-ipsec-operator") in names and ("MutatingWebhookConfiguration", "mesh-ipsec") in names
    assert not [n for n in names if "ipsec-mesh" in n[1]], names
    env = _env(documents)
    assert env["IPSEC_MESH_SERVICE_NAME"] == "mesh-ipsec-operator" and env["IPSEC_MESH_WEBHOOK_CONFIGS"] == "mesh-ipsec"
    assert by_kind(documents, "Deployment")[0]["metadata"]["labels"]["app.kubernetes.io/name"] == "ipsec"
    documents, _ = render(OPTIONS["names"])
    assert {d["metadata"]["name"] for d in documents if d["kind"] != "ClusterKopfPeering"} == {"ipsec", "ipsec-operator"}


def test_injection_never_reaches_system_or_excluded_namespaces():
    for values, expected in [({}, {"kube-system", "kube-public", "kube-node-lease", "cert-manager", NAMESPACE}),
                             (OPTIONS["webhook-per-policy"], {"kube-system", "monitoring", NAMESPACE})]:
        documents, _ = render(values)
        [mutating] = by_kind(documents, "MutatingWebhookConfiguration")
        assert len(mutating["webhooks"]) == 2
        for webhook in mutating["webhooks"]:
            expressions = webhook["namespaceSelector"]["matchExpressions"]
            excluded = next(e for e in expressions if e["key"] == "kubernetes.io/metadata.name")
            assert excluded["operator"] == "NotIn" and set(excluded["values"]) == expected
        # The pod-label path also skips namespaces labelled ipsec-mesh.io/inject=disabled.
        by_label = next(e for e in mutating["webhooks"][1]["namespaceSelector"]["matchExpressions"]
                        if e["key"] == "ipsec-mesh.io/inject")
        assert by_label == {"key": "ipsec-mesh.io/inject", "operator": "NotIn", "values": ["enabled", "disabled"]}


def test_each_webhook_has_its_own_failure_policy():
    documents, _ = render(OPTIONS["webhook-per-policy"])
    assert {w["failurePolicy"] for w in by_kind(documents, "MutatingWebhookConfiguration")[0]["webhooks"]} == {"Ignore"}
    assert by_kind(documents, "ValidatingWebhookConfiguration")[0]["webhooks"][0]["failurePolicy"] == "Fail"
    documents, _ = render({"webhook": {"failurePolicy": "Ignore"}})
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert {w["failurePolicy"] for w in by_kind(documents, kind)[0]["webhooks"]} == {"Ignore"}


def test_probes_ask_whether_the_operator_can_serve():
    container = _pod_spec(render({})[0])["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 60
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "liveness"}
    assert str(ports["liveness"]) == _env(render({})[0])["IPSEC_MESH_LIVENESS_PORT"]
    assert not any(a.startswith("--liveness") for a in container["args"])  # kopf's answers from the event loop


def test_webhooks_disabled_is_told_to_the_operator():
    documents, _ = render(OPTIONS["no-webhooks"])
    assert _env(documents)["IPSEC_MESH_WEBHOOK_ENABLED"] == "false"
    assert not any("admissionregistration.k8s.io" in r["apiGroups"] for r in by_kind(documents, "ClusterRole")[0]["rules"])
    assert _env(render({})[0])["IPSEC_MESH_WEBHOOK_ENABLED"] == "true"


def test_common_knobs_reach_their_objects():
    documents, _ = render(OPTIONS["knobs"])
    deployment = by_kind(documents, "Deployment")[0]
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "net"
    assert "team" not in deployment["spec"]["selector"]["matchLabels"]  # the selector is immutable
    assert by_kind(documents, "ServiceAccount")[0]["metadata"]["annotations"] == {"iam/role": "x"}
    assert json.loads(_env(documents)["IPSEC_MESH_SIDECAR_RESOURCES"])["limits"] == {"memory": "64Mi"}
    env = _env(documents)
    assert (env["IPSEC_MESH_MAX_SERVICES_PER_NAMESPACE"], env["IPSEC_MESH_MAX_ENDPOINT_SLICES_PER_NAMESPACE"]) == (
        "150", "600")
    defaults = _env(render({})[0])  # the chart's defaults are the operator's
    assert int(defaults["IPSEC_MESH_MAX_SERVICES_PER_NAMESPACE"]) == MAX_SERVICES_PER_NAMESPACE
    assert int(defaults["IPSEC_MESH_MAX_ENDPOINT_SLICES_PER_NAMESPACE"]) == MAX_ENDPOINT_SLICES_PER_NAMESPACE
    [monitor] = by_kind(documents, "ServiceMonitor")
    service = by_kind(documents, "Service")[0]
    assert monitor["metadata"]["labels"]["release"] == "prom" and monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert not by_kind(render({})[0], "ServiceMonitor")


def test_bundle_endpoint_is_off_by_default_and_when_on_has_its_own_service_port_and_env():
    documents, _ = render({})
    assert "IPSEC_MESH_BUNDLE_PORT" not in _env(documents)
    assert [s["metadata"]["name"] for s in by_kind(documents, "Service")] == ["mesh-ipsec-mesh-operator"]
    assert "bundle" not in {p["name"] for p in _pod_spec(documents)["containers"][0]["ports"]}
    documents, _ = render(OPTIONS["bundle-endpoint"])
    env = _env(documents)
    assert env["IPSEC_MESH_BUNDLE_PORT"] == "9444" and env["IPSEC_MESH_BUNDLE_REFRESH_HINT"] == "2m"
    ports = {p["name"]: p["containerPort"] for p in _pod_spec(documents)["containers"][0]["ports"]}
    assert ports["bundle"] == 9444
    services = {s["metadata"]["name"]: s for s in by_kind(documents, "Service")}
    bundle = services["mesh-ipsec-mesh-operator-bundle"]
    assert bundle["spec"]["type"] == "LoadBalancer"
    assert bundle["spec"]["ports"] == [{"name": "bundle", "port": 9444, "targetPort": "bundle", "protocol": "TCP"}]
    assert bundle["spec"]["loadBalancerSourceRanges"] == ["198.51.100.0/24"]
    assert bundle["metadata"]["annotations"] == {"lb/internal": "true"}
    # Only the bundle endpoint is exposed there: never the mesh API or the webhook.
    assert bundle["spec"]["selector"] == services["mesh-ipsec-mesh-operator"]["spec"]["selector"]
    assert "bundle" not in {p["name"] for p in services["mesh-ipsec-mesh-operator"]["spec"]["ports"]}
