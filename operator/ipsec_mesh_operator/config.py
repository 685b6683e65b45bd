"""Operator settings, from environment variables (the chart sets them)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ipsec_mesh.meshapi import fields

INJECT_LABEL = "ipsec-mesh.io/inject"
INJECTED_ANNOTATION = "ipsec-mesh.io/injected"
FINALIZER = "ipsec-mesh.io/finalizer"
#: A Secret a peering's remote (pskSecretRef, trustBundle of kind Secret) may name must carry this label set to "true".
REMOTE_SECRET_LABEL = "ipsec-mesh.io/remote-credentials"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"IPSEC_MESH_{name}", default)


def _duration(name: str, default: str) -> int:
    return fields.duration(_env(name, default), f"IPSEC_MESH_{name}")


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
    sidecar_image: str = "ghcr.io/ipsec-mesh/ipsec-mesh:0.1.0"
    webhook_configs: tuple[str, ...] = field(default=("ipsec-mesh",))
    #: Directory with tls.crt/tls.key for the webhook server (cert-manager); empty: the mesh CA issues it.
    webhook_tls_dir: str = ""
    #: Namespace labels feed namespaceSelector peers; off only where namespaces cannot be listed.
    watch_namespaces: bool = True
    #: Off (chart webhook.enabled=false): no webhook server, webhook configurations never read or patched.
    webhook_enabled: bool = True
    #: The injected sidecar's container resources (chart sidecar.resources).
    sidecar_resources: dict[str, Any] = field(default_factory=lambda: {
        "requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
    #: Port of the liveness endpoint (served by a thread; 0: none) and how long the loop may stall.
    liveness_port: int = 0
    liveness_max_stall: int = 30
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
            webhook_configs=names("WEBHOOK_CONFIGS") or ("ipsec-mesh",),
            webhook_tls_dir=_env("WEBHOOK_TLS_DIR", ""),
            watch_namespaces=_flag("WATCH_NAMESPACES"),
            webhook_enabled=_flag("WEBHOOK_ENABLED"),
            sidecar_resources=_resources(_env("SIDECAR_RESOURCES", "")) or cls().sidecar_resources,
            liveness_port=int(_env("LIVENESS_PORT", "0")),
            liveness_max_stall=_duration("LIVENESS_MAX_STALL", "30s"),
            bundle_port=int(_env("BUNDLE_PORT", "")) if _env("BUNDLE_PORT", "") else None,
            bundle_refresh_hint=_duration("BUNDLE_REFRESH_HINT", "5m"),
        )


def _flag(name: str) -> bool:
    value = _env(name, "true").lower()
    if value not in ("true", "false"):
        raise ValueError(f"IPSEC_MESH_{name} must be true or false, not {value!r}")
    return value == "true"


def _resources(text: str) -> dict[str, Any] | None:
    """Container resources as JSON ({"requests": {...}, "limits": {...}}); None when unset."""
    if not text.strip():
        return None
    value = json.loads(text)
    if not isinstance(value, dict) or set(value) - {"requests", "limits", "claims"} or not all(
            isinstance(v, dict) and all(isinstance(q, (str, int)) for q in v.values())
            for k, v in value.items() if k != "claims"):
        raise ValueError("IPSEC_MESH_SIDECAR_RESOURCES must be a JSON object with requests/limits maps")
    return value
