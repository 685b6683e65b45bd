"""Mesh mode's settings: environment variables (set by the operator's injection), plus an
optional settings file with the keys both modes share (see config.SidecarSettings).

    IPSEC_MESH_API_URL        https://ipsec-mesh-operator.<ns>.svc:8443     required
    IPSEC_MESH_TOKEN_FILE     projected ServiceAccount token (re-read per request)  required
    IPSEC_MESH_CA_BUNDLE      PEM of the CA(s) that sign the mesh API's certificate  required, or
    IPSEC_MESH_CA_BUNDLE_FILE   a file holding it
    IPSEC_MESH_HEALTH_PORT    /ready, /readyz, /healthz, /metrics on 0.0.0.0 (15021); no /status
    IPSEC_MESH_HEALTH_HOST    the address the health port binds             (0.0.0.0)
    IPSEC_MESH_STATUS_LISTEN  those and /status locally, for `ipsec-mesh-sidecar status` and
                              `ipsec-mesh explain` (127.0.0.1:9741; off to disable)
    IPSEC_MESH_DATAPLANE      xfrm or none; overrides the settings file     (xfrm)
    IPSEC_MESH_STATUS_INTERVAL  seconds between status reports              (30s)
    IPSEC_MESH_WATCH_WAIT     peer-map stream heartbeat (long-poll wait)    (30s)
    IPSEC_MESH_SETTINGS       settings file path (same as --settings)
    POD_NAME, POD_NAMESPACE   the pod, to check the peer map is ours        (optional)
    POD_IPS                   the pod's IPs (comma-separated), where IKE listens if the
                              peer map does not list them yet               (optional)
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..meshapi import fields
from ..meshapi.errors import PeerMapError
from ..meshapi.ports import HEALTH_PORT, STATUS_LISTEN
from ..records import record
from .config import (
    DATAPLANES,
    SIDECAR_SETTINGS_KEYS,
    ConfigError,
    SidecarSettings,
    load_yaml_document,
    parse_sidecar_settings,
)

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_STATUS_INTERVAL = 30
DEFAULT_WATCH_WAIT = 30


class MeshSettingsError(ConfigError):
    """A mesh-mode setting is missing or invalid; `variable` names it."""

    def __init__(self, variable: str, message: str):
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@record(frozen=True)
class MeshSettings:
    api_url: str
    token_file: str
    ca_bundle: str
    health_host: str = "0.0.0.0"
    health_port: int = HEALTH_PORT
    status_listen: tuple[str, int] | None = None
    status_interval: float = DEFAULT_STATUS_INTERVAL
    watch_wait: float = DEFAULT_WATCH_WAIT
    pod_name: str = ""
    pod_namespace: str = ""
    pod_ips: tuple[str, ...] = ()
    sidecar: SidecarSettings = field(default_factory=SidecarSettings)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise MeshSettingsError(name, "is not set")
    return value


def _checked(name: str, parse, value):
    """Run a meshapi.fields reader, turning its PeerMapError into one that names the variable."""
    try:
        return parse(value)
    except PeerMapError as exc:
        raise MeshSettingsError(name, str(exc).removeprefix(f"{name}: ")) from None


def _seconds(env: Mapping[str, str], name: str, default: int) -> float:
    """A duration: plain seconds or Go-style (90s, 1m30s)."""
    value = env.get(name, "").strip() or str(default)
    return float(_checked(name, lambda v: fields.duration(int(v) if v.isdigit() else v, name), value))


def _api_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise MeshSettingsError("IPSEC_MESH_API_URL", f"{value!r} is not an https:// URL")
    return value


def _ca_bundle(env: Mapping[str, str]) -> str:
    inline, path = env.get("IPSEC_MESH_CA_BUNDLE", "").strip(), env.get("IPSEC_MESH_CA_BUNDLE_FILE", "").strip()
    if bool(inline) == bool(path):
        raise MeshSettingsError("IPSEC_MESH_CA_BUNDLE", "set exactly one of it and IPSEC_MESH_CA_BUNDLE_FILE")
    name, value = "IPSEC_MESH_CA_BUNDLE", inline
    if path:
        name = "IPSEC_MESH_CA_BUNDLE_FILE"
        try:
            with open(path) as bundle:
                value = bundle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise MeshSettingsError(name, f"cannot read {path}: {exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise MeshSettingsError(name, "holds no PEM certificate")
    return value


def _status_listen(env: Mapping[str, str]) -> tuple[str, int] | None:
    value = env.get("IPSEC_MESH_STATUS_LISTEN", STATUS_LISTEN).strip()
    if value in ("", "off"):
        return None
    return _checked("IPSEC_MESH_STATUS_LISTEN", lambda v: fields.host_port(v, "IPSEC_MESH_STATUS_LISTEN"), value)


def _sidecar_settings(env: Mapping[str, str], settings_file: str | None) -> SidecarSettings:
    settings = load_sidecar_settings(settings_file or env.get("IPSEC_MESH_SETTINGS") or None)
    dataplane = env.get("IPSEC_MESH_DATAPLANE", "").strip()
    if not dataplane:
        return settings
    if dataplane not in DATAPLANES:
        raise MeshSettingsError("IPSEC_MESH_DATAPLANE", f"must be one of {', '.join(DATAPLANES)}")
    return dataclasses.replace(settings, dataplane=dataplane)


def _pod_ips(value: str) -> tuple[str, ...]:
    ips = tuple(item.strip() for item in value.split(",") if item.strip())
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise MeshSettingsError("POD_IPS", f"{ip!r} is not an IP address") from None
    return ips


def load_sidecar_settings(path: str | Path | None) -> SidecarSettings:
    if path is None:
        return SidecarSettings()
    from pathlib import Path  # a settings file (which loads PyYAML too); mesh mode as injected has none

    path = Path(path)
    document = load_yaml_document(path)
    try:
        return parse_sidecar_settings(fields.obj({} if document is None else document, "", set(),
                                                 SIDECAR_SETTINGS_KEYS))
    except PeerMapError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def mesh_settings_from_env(env: Mapping[str, str], settings_file: str | None = None) -> MeshSettings:
    """Everything mesh mode needs before it talks to the API; raises MeshSettingsError/ConfigError."""
    health_port = env.get("IPSEC_MESH_HEALTH_PORT", str(HEALTH_PORT)).strip()
    if not health_port.isdigit():
        raise MeshSettingsError("IPSEC_MESH_HEALTH_PORT", f"{health_port!r} is not a port number")
    return MeshSettings(
        api_url=_api_url(_required(env, "IPSEC_MESH_API_URL")),
        token_file=_required(env, "IPSEC_MESH_TOKEN_FILE"),
        ca_bundle=_ca_bundle(env),
        health_host=_checked("IPSEC_MESH_HEALTH_HOST",
                             lambda v: str(fields.address(v, "IPSEC_MESH_HEALTH_HOST")),
                             env.get("IPSEC_MESH_HEALTH_HOST", "0.0.0.0").strip()),
        health_port=_checked("IPSEC_MESH_HEALTH_PORT",
                             lambda v: fields.integer(int(v), "IPSEC_MESH_HEALTH_PORT", 0, 65535), health_port),
        status_listen=_status_listen(env),
        status_interval=_seconds(env, "IPSEC_MESH_STATUS_INTERVAL", DEFAULT_STATUS_INTERVAL),
        watch_wait=_seconds(env, "IPSEC_MESH_WATCH_WAIT", DEFAULT_WATCH_WAIT),
        pod_name=env.get("POD_NAME", "").strip(),
        pod_namespace=env.get("POD_NAMESPACE", "").strip(),
        pod_ips=_pod_ips(env.get("POD_IPS", "")),
        sidecar=_sidecar_settings(env, settings_file),
    )
