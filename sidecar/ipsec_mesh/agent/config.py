"""The sidecar's own settings, around the peer map it protects.

`SidecarSettings` (data plane, netns, initiate, ike, log) is shared by both modes: the
standalone file below adds the peer map and credentials (`AgentConfig`); mesh mode
(mesh_settings.py) reads the same keys from its optional settings file.

Example (docs/sidecar.md has the full reference)::

    peerMap:            # inline peer map (see meshapi.model), or peerMapFile: path
      local: {identity: a.default.pod.mesh.test, addresses: [10.0.0.1]}
      peerings: [...]
    certificate: {cert: a.pem, key: a.key}     # for certificate peerings
    dataplane: xfrm                            # or none: negotiate only, install nothing
    initiate: [10.0.0.2]                       # peers to connect to at start (besides ACQUIRE),
                                               # or `peers`: every pod peer of the map, also new ones
    ike: {port: 500, nattPort: 4500, dpd: 30s, fragmentSize: 1280, forceEncap: false}
    status: {listen: 127.0.0.1:9741}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any

from ..ike.config import Retransmit
from ..meshapi import fields
from ..meshapi.documents import NotYaml, load_yaml
from ..meshapi.errors import PeerMapError
from ..meshapi.model import PeerMap, load_peer_map_file
from ..meshapi.ports import STATUS_HOST, STATUS_LISTEN, STATUS_PORT
from ..records import record

if TYPE_CHECKING:
    from pathlib import Path

DATAPLANES = ("xfrm", "none")


class ConfigError(ValueError):
    """The sidecar's configuration is unusable; the message names the field."""


@record(frozen=True)
class IkeSettings:
    port: int = 500
    natt_port: int = 4500
    dpd: int = 30
    fragment_size: int = 1280
    force_encap: bool = False
    childless: str = "allow"
    retransmit_timeout: float = 2.0
    retransmit_tries: int = 5
    cookie_threshold: int = 50
    half_open_limit: int = 1000
    cookie_threshold_per_source: int = 5
    half_open_limit_per_source: int = 20

    def retransmit(self) -> Retransmit:
        return Retransmit(timeout=self.retransmit_timeout, tries=self.retransmit_tries)


@record(frozen=True)
class SidecarSettings:
    """What both modes (standalone file, mesh API) configure the same way."""

    dataplane: str = "xfrm"
    netns: str | None = None
    initiate: tuple[str, ...] = ()
    #: `initiate: peers`: connect to every single-address peer of the map, at start and when a map adds one.
    initiate_peers: bool = False
    ike: IkeSettings = field(default_factory=IkeSettings)
    log_format: str = "text"
    log_level: str = "info"


#: The YAML keys `parse_sidecar_settings` reads.
SIDECAR_SETTINGS_KEYS = frozenset({"dataplane", "netns", "initiate", "ike", "log"})


def _current_dir() -> Path:
    # pathlib is imported by the `run` configuration only: mesh mode never loads it (0.24 MB per pod).
    from pathlib import Path

    return Path(".")


@record(frozen=True, kw_only=True)
class AgentConfig(SidecarSettings):
    """The standalone mode: the shared settings plus the peer map and credentials from files."""

    peer_map: PeerMap
    cert_file: Path | None = None
    key_file: Path | None = None
    status_listen: tuple[str, int] | None = (STATUS_HOST, STATUS_PORT)
    base_dir: Path = field(default_factory=_current_dir)


def _ike_settings(value: Any, path: str) -> IkeSettings:
    doc = fields.obj(value, path, set(), {"port", "nattPort", "dpd", "fragmentSize", "forceEncap", "childless",
                                         "retransmitTimeout", "retransmitTries", "cookieThreshold",
                                         "halfOpenLimit", "cookieThresholdPerSource",
                                         "halfOpenLimitPerSource"})
    d = IkeSettings()
    return IkeSettings(
        port=fields.integer(doc.get("port", d.port), f"{path}.port", 0, 65535),
        natt_port=fields.integer(doc.get("nattPort", d.natt_port), f"{path}.nattPort", 0, 65535),
        dpd=0 if doc.get("dpd") in (0, "0", "off") else fields.duration(doc.get("dpd", d.dpd), f"{path}.dpd"),
        fragment_size=fields.integer(doc.get("fragmentSize", d.fragment_size), f"{path}.fragmentSize", 576, 65000),
        force_encap=fields.boolean(doc.get("forceEncap", d.force_encap), f"{path}.forceEncap"),
        childless=fields.string(doc.get("childless", d.childless), f"{path}.childless", 8),
        retransmit_timeout=float(fields.integer(int(doc.get("retransmitTimeout", d.retransmit_timeout)),
                                                f"{path}.retransmitTimeout", 1, 60)),
        retransmit_tries=fields.integer(doc.get("retransmitTries", d.retransmit_tries), f"{path}.retransmitTries",
                                        0, 10),
        cookie_threshold=fields.integer(doc.get("cookieThreshold", d.cookie_threshold), f"{path}.cookieThreshold",
                                        0, 1_000_000),
        half_open_limit=fields.integer(doc.get("halfOpenLimit", d.half_open_limit), f"{path}.halfOpenLimit",
                                       1, 1_000_000),
        cookie_threshold_per_source=fields.integer(
            doc.get("cookieThresholdPerSource", d.cookie_threshold_per_source),
            f"{path}.cookieThresholdPerSource", 0, 1_000_000),
        half_open_limit_per_source=fields.integer(
            doc.get("halfOpenLimitPerSource", d.half_open_limit_per_source),
            f"{path}.halfOpenLimitPerSource", 1, 1_000_000),
    )


def parse_sidecar_settings(doc: Mapping[str, Any]) -> SidecarSettings:
    """The shared settings from an already key-checked document (unknown keys refused by the caller)."""
    dataplane = fields.string(doc.get("dataplane", "xfrm"), "dataplane", 8)
    if dataplane not in DATAPLANES:
        raise PeerMapError("dataplane", f"must be one of {', '.join(DATAPLANES)}")
    log = fields.obj(doc.get("log", {}), "log", set(), {"format", "level"})
    log_format = fields.string(log.get("format", "text"), "log.format", 8)
    if log_format not in ("text", "json"):
        raise PeerMapError("log.format", "must be text or json")
    initiate = doc.get("initiate", [])
    initiate_peers = isinstance(initiate, str)
    if initiate_peers and initiate != "peers":
        raise PeerMapError("initiate", "must be a list of addresses or the word peers")
    return SidecarSettings(
        dataplane=dataplane,
        netns=fields.string(doc["netns"], "netns", 255) if doc.get("netns") is not None else None,
        initiate=() if initiate_peers else tuple(str(a) for a in fields.array(initiate, "initiate",
                                                                               fields.address, 4096)),
        initiate_peers=initiate_peers,
        ike=_ike_settings(doc.get("ike", {}), "ike"),
        log_format=log_format,
        log_level=fields.string(log.get("level", "info"), "log.level", 10),
    )


def parse_agent_config(document: Any, base_dir: Path) -> AgentConfig:
    doc = fields.obj(document, "", set(), {"peerMap", "peerMapFile", "certificate", "status"} | SIDECAR_SETTINGS_KEYS)
    if ("peerMap" in doc) == ("peerMapFile" in doc):
        raise PeerMapError("", "needs exactly one of peerMap or peerMapFile")
    if "peerMap" in doc:
        peer_map = PeerMap.from_dict(doc["peerMap"], base_dir=base_dir)
    else:
        peer_map = load_peer_map_file(base_dir / fields.string(doc["peerMapFile"], "peerMapFile", 4096))
    cert = key = None
    if "certificate" in doc:
        c = fields.obj(doc["certificate"], "certificate", {"cert", "key"})
        cert = base_dir / fields.string(c["cert"], "certificate.cert", 4096)
        key = base_dir / fields.string(c["key"], "certificate.key", 4096)
    status = fields.obj(doc.get("status", {}), "status", set(), {"listen"})
    listen = status.get("listen", STATUS_LISTEN)
    return AgentConfig(
        **vars(parse_sidecar_settings(doc)),
        peer_map=peer_map,
        cert_file=cert,
        key_file=key,
        status_listen=None if listen in (None, "", "off") else fields.host_port(listen, "status.listen"),
        base_dir=base_dir,
    )


def load_yaml_document(path: Path) -> Any:
    try:
        return load_yaml(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except NotYaml as exc:
        raise ConfigError(f"{path}: not YAML: {exc}") from None


def load_agent_config(path: str | Path) -> AgentConfig:
    from pathlib import Path

    path = Path(path)
    document = load_yaml_document(path)
    try:
        return parse_agent_config(document, path.parent)
    except PeerMapError as exc:
        raise ConfigError(f"{path}: {exc}") from None
