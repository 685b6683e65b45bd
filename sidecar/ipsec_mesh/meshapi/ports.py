"""Ports the operator and the sidecar must agree on without talking to each other."""

from __future__ import annotations

#: The sidecar's pod-facing health port (/ready, /readyz, /healthz, /metrics): the sidecar
#: listens on it by default and the injected container's probes and port list name it.
HEALTH_PORT = 15021
