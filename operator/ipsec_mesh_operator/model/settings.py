"""Operator settings, from environment variables (the chart sets them)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ipsec_mesh.meshapi import MAX_SERVICES, fields

from .services import MAX_ENDPOINT_SLICES, MAX_ENDPOINT_SLICES_PER_NAMESPACE, MAX_SERVICES_PER_NAMESPACE

INJECT_LABEL = "ipsec-mesh.io/inject"
INJECTED_ANNOTATION = "ipsec-mesh.io/injected"
FINALIZER = "ipsec-mesh.io/finalizer"
#: A Secret a peering's remote (pskSecretRef, trustBundle of kind Secret) may name must carry this label set to "true".
REMOTE_SECRET_LABEL = "ipsec-mesh.io/remote-credentials"
#: Set by Kubernetes on every namespace: what `namespaceSelector` matches a namespace by name with.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"IPSEC_MESH_{name}", default)


def _duration(name: str, default: str) -> int:
    return fields.duration(_env(name, default), f"IPSEC_MESH_{name}")


#: TCP keepalive's idle time (half of it) may not exceed 32,767 s; an hour is plenty.
MAX_DEAD_CLIENT_TIMEOUT = 3600
#: The injected sidecar's resources unless the chart says otherwise (values.yaml: sidecar.resources).
DEFAULT_SIDECAR_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}}
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?")


def sidecar_resources(text: str) -> dict[str, dict[str, str]]:
    """IPSEC_MESH_SIDECAR_RESOURCES: a container `resources` object as JSON (requests/limits of cpu, memory)."""
    name = "IPSEC_MESH_SIDECAR_RESOURCES"
    try:
        value: Any = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{name}: not JSON ({exc})") from None
    if not isinstance(value, dict) or not set(value) <= {"requests", "limits"}:
        raise ValueError(f"{name}: an object with requests and/or limits")
    out: dict[str, dict[str, str]] = {}
    for kind, amounts in value.items():
        if not isinstance(amounts, dict) or not set(amounts) <= {"cpu", "memory"}:
            raise ValueError(f"{name}.{kind}: an object with cpu and/or memory")
        for resource, amount in amounts.items():
            if not isinstance(amount, str) or not _QUANTITY.fullmatch(amount):
                raise ValueError(f"{name}.{kind}.{resource}: {amount!r} is not a quantity")
        out[kind] = dict(amounts)
    return out


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str = "ipsec-mesh-system"
    trust_domain: str = "cluster.local"
    service_name: str = "ipsec-mesh-operator"
    ca_secret: str = "ipsec-mesh-ca"
    api_host: str = "0.0.0.0"
    api_port: int = 8443
    webhook_port: int = 9443
    metrics_port: int = 9090
    #: Extra names/IPs for the operator's serving certificate (besides the Service's names).
    extra_server_names: tuple[str, ...] = ()
    token_audience: str = "ipsec-mesh"
    max_cert_lifetime: int = 7 * 86400
    ca_rotation_interval: int = 365 * 86400
    ca_propagation: int = 600
    key_check_interval: int = 60
    #: Seconds a sidecar's status report counts as current.
    status_ttl: int = 120
    sidecar_image: str = "ghcr.io/ipsec-mesh/ipsec-mesh-sidecar:0.1.0"
    sidecar_resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {kind: dict(amounts) for kind, amounts in DEFAULT_SIDECAR_RESOURCES.items()}, hash=False)
    webhook_configs: tuple[str, ...] = field(default=("ipsec-mesh",))
    #: Directory with tls.crt/tls.key for the webhook server (cert-manager); empty: the mesh CA issues it.
    webhook_tls_dir: str = ""
    #: Namespace labels feed namespaceSelector peers; off only where namespaces cannot be listed.
    watch_namespaces: bool = True
    #: Off (chart webhook.enabled=false): no webhook server, webhook configurations never read or patched.
    webhook_enabled: bool = True
    #: Port of the liveness endpoint (served by a thread; 0: none) and how long the loop may stall.
    liveness_port: int = 0
    liveness_max_stall: int = 30
    #: Open connections per HTTPS server (mesh API, webhooks); see docs/security-model.md for the memory.
    max_connections: int = 4096
    #: Seconds for a TLS handshake; then for request headers, and idle between requests.
    handshake_timeout: float = 5.0
    idle_timeout: float = 15.0
    #: Seconds a client may leave what we sent unacknowledged before its connection is closed (TCP
    #: keepalive + TCP_USER_TIMEOUT: a client gone without FIN/RST frees its watch's slot); 0: off (tests only).
    dead_client_timeout: int = 30
    #: Mesh API requests one pod may have open at once (long polls included); 429 beyond.
    max_requests_per_pod: int = 8
    #: Services and EndpointSlices indexed from any one namespace (docs/services.md, "Hostile input").
    max_services_per_namespace: int = MAX_SERVICES_PER_NAMESPACE
    max_endpoint_slices_per_namespace: int = MAX_ENDPOINT_SLICES_PER_NAMESPACE
    #: Namespaces whose Secrets the operator may use (chart value rbac.secretNamespaces: its RBAC
    #: grants Secrets there only); empty: every namespace.
    secret_namespaces: tuple[str, ...] = ()
    #: Port of the SPIFFE bundle endpoint (federation.py); None: not served.
    bundle_port: int | None = None
    #: The spiffe_refresh_hint it publishes, seconds.
    bundle_refresh_hint: int = 300

    @property
    def ca_lifetime(self) -> int:
        return 2 * self.ca_rotation_interval + self.max_cert_lifetime

    @property
    def server_names(self) -> tuple[str, ...]:
        svc, ns = self.service_name, self.namespace
        return (f"{svc}.{ns}.svc", svc, f"{svc}.{ns}", f"{svc}.{ns}.svc.cluster.local", *self.extra_server_names)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        def names(variable: str) -> tuple[str, ...]:
            return tuple(item.strip() for item in _env(variable, "").split(",") if item.strip())

        return cls(
            namespace=_env("NAMESPACE", cls.namespace),
            trust_domain=_env("TRUST_DOMAIN", cls.trust_domain),
            service_name=_env("SERVICE_NAME", cls.service_name),
            ca_secret=_env("CA_SECRET", cls.ca_secret),
            api_host=_env("API_HOST", cls.api_host),
            api_port=int(_env("API_PORT", str(cls.api_port))),
            webhook_port=int(_env("WEBHOOK_PORT", str(cls.webhook_port))),
            metrics_port=int(_env("METRICS_PORT", str(cls.metrics_port))),
            extra_server_names=names("EXTRA_SERVER_NAMES"),
            token_audience=_env("TOKEN_AUDIENCE", cls.token_audience),
            max_cert_lifetime=_duration("MAX_CERT_LIFETIME", "168h"),
            ca_rotation_interval=_duration("CA_ROTATION_INTERVAL", "8760h"),
            ca_propagation=_duration("CA_PROPAGATION", "10m"),
            key_check_interval=_duration("KEY_CHECK_INTERVAL", "60s"),
            status_ttl=_duration("STATUS_TTL", "120s"),
            sidecar_image=_env("SIDECAR_IMAGE", cls.sidecar_image),
            # Unset or empty: the measured defaults.
            sidecar_resources=sidecar_resources(_env("SIDECAR_RESOURCES", "") or json.dumps(DEFAULT_SIDECAR_RESOURCES)),
            webhook_configs=names("WEBHOOK_CONFIGS") or ("ipsec-mesh",),
            webhook_tls_dir=_env("WEBHOOK_TLS_DIR", ""),
            watch_namespaces=_flag("WATCH_NAMESPACES"),
            webhook_enabled=_flag("WEBHOOK_ENABLED"),
            liveness_port=int(_env("LIVENESS_PORT", "0")),
            liveness_max_stall=_duration("LIVENESS_MAX_STALL", "30s"),
            max_connections=_count("MAX_CONNECTIONS", cls.max_connections),
            handshake_timeout=_duration("HANDSHAKE_TIMEOUT", "5s") or 1,
            idle_timeout=_duration("IDLE_TIMEOUT", "15s") or 1,
            dead_client_timeout=_at_most("DEAD_CLIENT_TIMEOUT", "30s", MAX_DEAD_CLIENT_TIMEOUT),
            max_requests_per_pod=_count("MAX_REQUESTS_PER_POD", cls.max_requests_per_pod),
            max_services_per_namespace=_count("MAX_SERVICES_PER_NAMESPACE", MAX_SERVICES_PER_NAMESPACE, MAX_SERVICES),
            max_endpoint_slices_per_namespace=_count("MAX_ENDPOINT_SLICES_PER_NAMESPACE",
                                                     MAX_ENDPOINT_SLICES_PER_NAMESPACE, MAX_ENDPOINT_SLICES),
            secret_namespaces=names("SECRET_NAMESPACES"),
            bundle_port=int(_env("BUNDLE_PORT", "")) if _env("BUNDLE_PORT", "") else None,
            bundle_refresh_hint=_duration("BUNDLE_REFRESH_HINT", "5m"),
        )


def _at_most(name: str, default: str, high: int) -> int:
    seconds = _duration(name, default)
    if seconds > high:
        raise ValueError(f"IPSEC_MESH_{name} must be at most {high}s, not {seconds}s")
    return seconds


def _count(name: str, default: int, high: int = 1_000_000) -> int:
    """A whole number 1..high (for a share, up to the cluster-wide bound it divides up)."""
    text = _env(name, str(default))
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= high:
        raise ValueError(f"IPSEC_MESH_{name} must be a whole number within 1..{high}, not {text!r}")
    return int(text)


def _flag(name: str) -> bool:
    value = _env(name, "true").lower()
    if value not in ("true", "false"):
        raise ValueError(f"IPSEC_MESH_{name} must be true or false, not {value!r}")
    return value == "true"
