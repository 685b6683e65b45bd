"""Ports the operator and the sidecar must agree on without talking to each other."""

from __future__ import annotations

#: The sidecar's pod-facing health port (/ready, /readyz, /healthz, /metrics): the sidecar
#: listens on it by default and the injected container's probes and port list name it.
HEALTH_PORT = 15021

#: The sidecar's local status listener (/status and the health endpoints, on loopback inside
#: the pod): where `ipsec-mesh-sidecar status` and `ipsec-mesh explain` look by default.
STATUS_HOST = "127.0.0.1"
STATUS_PORT = 9741
STATUS_LISTEN = f"{STATUS_HOST}:{STATUS_PORT}"
