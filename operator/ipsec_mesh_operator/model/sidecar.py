"""The injected sidecar container as the operator recognises it: by the webhook that adds it, the
feeder that indexes pods, and the read-only CLI that looks into it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .settings import OperatorConfig

SIDECAR_NAME = "ipsec-mesh"
SIDECAR_COMMAND = ["ipsec-mesh-sidecar", "mesh"]


def has_injected_sidecar(spec: Mapping[str, Any], config: OperatorConfig) -> bool:
    """The pod runs the sidecar this operator injects (its image, mesh mode, as a native sidecar)."""
    return any(
        isinstance(c, Mapping) and c.get("name") == SIDECAR_NAME and c.get("image") == config.sidecar_image
        and c.get("command") == SIDECAR_COMMAND and c.get("restartPolicy") == "Always"
        for c in spec.get("initContainers") or []
    )
