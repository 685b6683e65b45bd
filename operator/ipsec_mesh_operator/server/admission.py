"""Admission webhooks: inject the sidecar into opted-in pods; refuse peerings that make no sense.

Opting in: the namespace carries ``ipsec-mesh.io/inject=enabled`` (matched by
the webhook configuration's namespaceSelector) or the pod the label
``ipsec-mesh.io/inject: "true"``; a pod labelled ``"false"`` opts out. The
sidecar is a native sidecar (an init container with restartPolicy Always, so
it starts first and its startup probe holds the app containers back until the
data plane is in place), with NET_ADMIN as its only capability.

Refused, so that no pod is ever counted as meshed without a working sidecar:
a pod that sets the ``injected`` annotation itself or names a container like
the sidecar, an explicitly opted-in ``hostNetwork`` pod (the sidecar would
program the node's namespace), and a pod whose ``ip_unprivileged_port_start``
sysctl keeps IKE off UDP 500. A ``hostNetwork`` pod of an opted-in namespace is
left alone, with a warning. The operator, for its part, only counts pods that
carry the sidecar this webhook injects (`has_injected_sidecar`).
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ipsec_mesh.meshapi import MeshApiError
from ipsec_mesh.meshapi.ports import HEALTH_PORT

from ..model.peering import InvalidPeering, PeeringSpec, parse_peering
from ..model.peering_status import awaiting_consent_message
from ..model.settings import INJECT_LABEL, INJECTED_ANNOTATION, OperatorConfig
from ..model.sidecar import SIDECAR_COMMAND, SIDECAR_NAME, has_injected_sidecar
from ..pki.psk import secret_name
from .api import RUNTIME_KEY, contain_errors, read_json

logger = logging.getLogger("ipsec_mesh_operator.admission")

TOKEN_VOLUME = "ipsec-mesh-token"
RUN_VOLUME = "ipsec-mesh-run"
TOKEN_DIR = "/var/run/secrets/ipsec-mesh"
PORT_START_SYSCTL = "net.ipv4.ip_unprivileged_port_start"
IKE_PORT = 500
TOKEN_SECONDS = 3600
MAX_REVIEW_BYTES = 3 * 1024 * 1024
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def sidecar_container(config: OperatorConfig, ca_bundle: str) -> dict[str, Any]:
    def field_env(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return {
        "name": SIDECAR_NAME,
        "image": config.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        # command, not args: whatever the image's ENTRYPOINT/CMD (the operator's kopf), run mesh mode.
        "command": list(SIDECAR_COMMAND),
        "restartPolicy": "Always",
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IPS", "status.podIPs"),
            {"name": "IPSEC_MESH_API_URL", "value": f"https://{config.server_names[0]}:{config.api_port}"},
            {"name": "IPSEC_MESH_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
            {"name": "IPSEC_MESH_CA_BUNDLE", "value": ca_bundle},
            {"name": "IPSEC_MESH_HEALTH_PORT", "value": str(HEALTH_PORT)},
        ],
        "ports": [{"name": "ike", "containerPort": 500, "protocol": "UDP"},
                  {"name": "ike-natt", "containerPort": 4500, "protocol": "UDP"},
                  {"name": "mesh-health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": HEALTH_PORT},
            "periodSeconds": 1, "failureThreshold": 120, "timeoutSeconds": 1,
        },
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": HEALTH_PORT}, "periodSeconds": 10},
        "resources": {kind: dict(amounts) for kind, amounts in config.sidecar_resources.items()},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            # XFRM needs uid 0 with CAP_NET_ADMIN in the pod's network namespace; nothing else.
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": RUN_VOLUME, "mountPath": "/run/ipsec-mesh"},
        ],
    }


def _volumes(config: OperatorConfig) -> list[dict[str, Any]]:
    return [
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": config.token_audience, "expirationSeconds": TOKEN_SECONDS, "path": "token"}}]}},
        {"name": RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


class InjectionRefused(Exception):
    """The pod cannot get a working sidecar, or pretends to have one: the message says what to change."""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _check_injectable(meta: Mapping[str, Any], spec: Mapping[str, Any], config: OperatorConfig) -> None:
    if _mapping(meta.get("annotations")).get(INJECTED_ANNOTATION) is not None:
        raise InjectionRefused(f"the annotation {INJECTED_ANNOTATION} is set by the injection webhook only; "
                               "remove it from the pod template")
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    if any(_mapping(c).get("name") == SIDECAR_NAME for c in containers):
        raise InjectionRefused(f"container name {SIDECAR_NAME} is reserved for the injected sidecar; rename yours")
    if spec.get("hostNetwork") is True:
        raise InjectionRefused("hostNetwork pods cannot get the sidecar (it would program the node's network "
                               f"namespace); remove the label {INJECT_LABEL}=true or hostNetwork")
    for sysctl in _mapping(spec.get("securityContext")).get("sysctls") or []:
        if _mapping(sysctl).get("name") != PORT_START_SYSCTL:
            continue
        value = str(_mapping(sysctl).get("value"))
        if not value.isdigit() or int(value) > IKE_PORT:
            raise InjectionRefused(f"{PORT_START_SYSCTL}={value} keeps the sidecar from binding UDP {IKE_PORT} "
                                   f"for IKE; set it to {IKE_PORT} or less, or leave it out (the webhook sets 0)")


def injection_patch(pod: Mapping[str, Any], config: OperatorConfig, ca_bundle: str) -> list[dict[str, Any]]:
    """JSON Patch operations that inject the sidecar; empty if the pod opts out, is a hostNetwork pod of
    an opted-in namespace, or already has what this webhook injected. Raises InjectionRefused."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    labels = _mapping(meta.get("labels"))
    if labels.get(INJECT_LABEL) == "false":
        return []
    if _mapping(meta.get("annotations")).get(INJECTED_ANNOTATION) == "true" and has_injected_sidecar(spec, config):
        return []
    if spec.get("hostNetwork") is True and labels.get(INJECT_LABEL) != "true":
        return []
    _check_injectable(meta, spec, config)
    ops: list[dict[str, Any]] = []
    sidecar = sidecar_container(config, ca_bundle)
    if spec.get("initContainers"):
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})
    if spec.get("volumes"):
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in _volumes(config))
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": _volumes(config)})
    # IKE listens on UDP 500: allow binding it without CAP_NET_BIND_SERVICE (a namespaced, safe sysctl).
    security = spec.get("securityContext") or {}
    sysctls = security.get("sysctls") or []
    if not any(s.get("name") == PORT_START_SYSCTL for s in sysctls if isinstance(s, Mapping)):
        sysctl = {"name": PORT_START_SYSCTL, "value": "0"}
        if "securityContext" not in spec:
            ops.append({"op": "add", "path": "/spec/securityContext", "value": {"sysctls": [sysctl]}})
        elif not sysctls:
            ops.append({"op": "add", "path": "/spec/securityContext/sysctls", "value": [sysctl]})
        else:
            ops.append({"op": "add", "path": "/spec/securityContext/sysctls/-", "value": sysctl})
    if meta.get("annotations"):
        ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(INJECTED_ANNOTATION)}", "value": "true"})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {INJECTED_ANNOTATION: "true"}})
    return ops


def peering_problems(obj: Mapping[str, Any]) -> list[str]:
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name") or "", meta.get("namespace") or ""
    problems = []
    if len(secret_name(name)) != len(name) + len("-psk") or len(name) > 63:
        problems.append("metadata.name: at most 63 characters (the PSK Secret is named <name>-psk)")
    try:
        parse_peering(namespace, name, obj.get("spec"))
    except InvalidPeering as exc:
        problems.extend(exc.messages)
    return problems


def consent_warnings(obj: Mapping[str, Any], index: Any) -> list[str]:
    """kubectl warnings for a valid peering that is one-sided in other namespaces (see index.py)."""
    meta = obj.get("metadata") or {}
    spec = parse_peering(meta.get("namespace") or "", meta.get("name") or "", obj.get("spec"))
    waiting = index.one_sided_namespaces(spec)
    return [awaiting_consent_message(waiting)] if waiting else []


def review_response(review: Any, config: OperatorConfig, ca_bundle: str, index: Any = None) -> dict[str, Any]:
    """Answer one AdmissionReview (admission.k8s.io/v1); `index` (the MeshIndex) adds consent warnings."""
    if not isinstance(review, Mapping) or not isinstance(review.get("request"), Mapping):
        raise ValueError("not an AdmissionReview")
    request = review["request"]
    uid = request.get("uid")
    if not isinstance(uid, str):
        raise ValueError("AdmissionReview without a uid")
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    kind = (request.get("kind") or {}).get("kind")
    obj = request.get("object") or {}
    if kind == "Pod" and request.get("operation") == "CREATE":
        try:
            ops = injection_patch(obj, config, ca_bundle)
        except InjectionRefused as exc:
            response["allowed"] = False
            response["status"] = {"code": 403, "reason": "Forbidden", "message": f"ipsec-mesh: {exc}"}
            ops = []
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
        elif response["allowed"] and (obj.get("spec") or {}).get("hostNetwork") is True:
            response["warnings"] = ["ipsec-mesh: hostNetwork pod not injected (the sidecar would program the "
                                    "node's network namespace); its traffic is not encrypted"]
    elif kind == "IPsecPeering" and request.get("operation") in ("CREATE", "UPDATE"):
        problems = peering_problems(obj)
        if problems:
            response["allowed"] = False
            response["status"] = {"code": 422, "reason": "Invalid",
                                  "message": "IPsecPeering rejected: " + "; ".join(problems)}
        elif index is not None and (warnings := consent_warnings(obj, index)):
            response["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def _secret_refs(obj: Any) -> set[str]:
    """Names of the Secrets a peering's remotes reference (none for an unparsable one)."""
    meta = _mapping(_mapping(obj).get("metadata"))
    try:
        spec: PeeringSpec = parse_peering(meta.get("namespace") or "", meta.get("name") or "", _mapping(obj).get("spec"))
    except InvalidPeering:
        return set()
    refs = {remote.psk_secret_ref[0] for remote in spec.remotes if remote.psk_secret_ref is not None}
    bundles = [remote.trust_bundle_ref or (remote.federation.bootstrap_ref if remote.federation else None)
               for remote in spec.remotes]
    return refs | {ref[1] for ref in bundles if ref is not None and ref[0] == "Secret"}


async def secret_access_problems(request: Mapping[str, Any], kube: Any) -> list[str]:
    """The Secrets a created or updated peering newly references that its author may not `get`.

    The operator reads them for the peering: without this SubjectAccessReview, a peering would
    let its author read, through the pods, Secrets their RBAC does not give them.
    """
    obj = _mapping(request.get("object"))
    namespace = _mapping(obj.get("metadata")).get("namespace") or request.get("namespace") or ""
    refs = _secret_refs(obj) - (_secret_refs(request.get("oldObject")) if request.get("operation") == "UPDATE" else set())
    user = _mapping(request.get("userInfo"))
    problems = []
    for name in sorted(refs):
        sar = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               # Reviews are not stored; a unique name keeps strict API emulators happy.
               "metadata": {"name": f"ipsec-mesh-{uuid.uuid4().hex}"}, "spec": {
            "user": user.get("username") or "", "uid": user.get("uid") or "",
            "groups": list(user.get("groups") or []), "extra": dict(_mapping(user.get("extra"))),
            "resourceAttributes": {"namespace": namespace, "verb": "get", "resource": "secrets", "name": name},
        }}
        try:
            answer = await kube.create(SAR_PATH, sar)
        except Exception as exc:  # fail closed: an unchecked reference is a refused one
            logger.warning("SubjectAccessReview for Secret %s/%s failed: %s", namespace, name, exc)
            problems.append(f"could not check access to Secret {namespace}/{name}; try again")
            continue
        if not _mapping(_mapping(answer).get("status")).get("allowed"):
            problems.append(f"{user.get('username') or 'the requester'} may not get Secret {namespace}/{name}; "
                            "a peering can only reference Secrets its author may read")
    return problems


async def _handle(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    try:
        review = await read_json(request, MAX_REVIEW_BYTES)
        bundle = "".join(runtime.index.trust_bundle)
        answer = review_response(review, runtime.config, bundle, runtime.index)
    except (ValueError, MeshApiError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    response, kind = answer["response"], _mapping(review["request"].get("kind")).get("kind")
    if kind == "IPsecPeering" and response["allowed"] and review["request"].get("operation") in ("CREATE", "UPDATE"):
        if problems := await secret_access_problems(review["request"], runtime.kube):
            response["allowed"] = False
            response["status"] = {"code": 403, "reason": "Forbidden",
                                  "message": "IPsecPeering rejected: " + "; ".join(problems)}
    return web.json_response(answer)


def make_webhook_app(runtime: Any) -> web.Application:
    app = web.Application(client_max_size=MAX_REVIEW_BYTES, middlewares=[contain_errors])
    app[RUNTIME_KEY] = runtime
    app.router.add_post("/mutate-pods", _handle)
    app.router.add_post("/validate-ipsecpeerings", _handle)
    return app
