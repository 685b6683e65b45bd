"""Admission webhooks: inject the sidecar into opted-in pods; refuse peerings that make no sense.

Opting in: the namespace carries ``ipsec-mesh.io/inject=enabled`` (matched by
the webhook configuration's namespaceSelector) or the pod the label
``ipsec-mesh.io/inject: "true"``; a pod labelled ``"false"`` opts out. The
sidecar is a native sidecar (an init container with restartPolicy Always, so
it starts first and its startup probe holds the app containers back until the
data plane is in place), with NET_ADMIN as its only capability.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .api import RUNTIME_KEY
from .config import INJECT_LABEL, INJECTED_ANNOTATION, OperatorConfig
from .peering import InvalidPeering, parse_peering
from .peering_status import awaiting_consent_message
from .psk import secret_name

logger = logging.getLogger("ipsec_mesh_operator.admission")

SIDECAR_NAME = "ipsec-mesh"
TOKEN_VOLUME = "ipsec-mesh-token"
RUN_VOLUME = "ipsec-mesh-run"
TOKEN_DIR = "/var/run/secrets/ipsec-mesh"
HEALTH_PORT = 15021
TOKEN_SECONDS = 3600
MAX_REVIEW_BYTES = 3 * 1024 * 1024


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
        "command": ["ipsec-mesh-sidecar", "mesh"],
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


def injection_patch(pod: Mapping[str, Any], config: OperatorConfig, ca_bundle: str) -> list[dict[str, Any]]:
    """JSON Patch operations that inject the sidecar; empty if the pod opts out or already has it."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if (meta.get("labels") or {}).get(INJECT_LABEL) == "false":
        return []
    if (meta.get("annotations") or {}).get(INJECTED_ANNOTATION) == "true":
        return []
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    if any(c.get("name") == SIDECAR_NAME for c in containers if isinstance(c, Mapping)):
        return []
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
    if not any(s.get("name") == "net.ipv4.ip_unprivileged_port_start" for s in sysctls if isinstance(s, Mapping)):
        sysctl = {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
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
        ops = injection_patch(obj, config, ca_bundle)
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    elif kind == "IPsecPeering" and request.get("operation") in ("CREATE", "UPDATE"):
        problems = peering_problems(obj)
        if problems:
            response["allowed"] = False
            response["status"] = {"code": 422, "reason": "Invalid",
                                  "message": "IPsecPeering rejected: " + "; ".join(problems)}
        elif index is not None and (warnings := consent_warnings(obj, index)):
            response["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


async def _handle(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    raw = await request.content.read(MAX_REVIEW_BYTES + 1)
    try:
        if len(raw) > MAX_REVIEW_BYTES:
            raise ValueError("AdmissionReview too large")
        review = json.loads(raw)
        bundle = "".join(runtime.index.trust_bundle)
        return web.json_response(review_response(review, runtime.config, bundle, runtime.index))
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)


def make_webhook_app(runtime: Any) -> web.Application:
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[RUNTIME_KEY] = runtime
    app.router.add_post("/mutate-pods", _handle)
    app.router.add_post("/validate-ipsecpeerings", _handle)
    return app
