"""swanctl.conf / strongswan.conf rendering and the parsed view of ``list-sas``.

Only the knobs our interop tests use have named fields; anything else goes through
``options`` dicts, which are merged verbatim into the rendered section.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Tree = dict[str, Any]


def render(tree: Tree, indent: int = 0) -> str:
    """strongswan.conf syntax: nested sections, quoted values, lists comma-joined."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in tree.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines.append(render(value, indent + 1))
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key} = {_quote(value)}")
    return "\n".join(line for line in lines if line)


def _quote(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


@dataclass
class Child:
    """One ``children.<name>`` section (CHILD_SA config)."""

    mode: str = "tunnel"                  # tunnel | transport | pass | drop
    esp_proposals: str | None = None      # e.g. "aes256gcm16-x25519"; None = charon default
    local_ts: str | None = None           # e.g. "10.0.0.1/32"; None = dynamic
    remote_ts: str | None = None
    start_action: str = "none"            # none | trap | start
    dpd_action: str | None = None         # clear | trap | restart
    close_action: str | None = None
    rekey_time: str | None = None         # "0" disables CHILD rekeying
    life_time: str | None = None
    rand_time: str | None = None
    options: Tree = field(default_factory=dict)

    def to_tree(self) -> Tree:
        tree: Tree = {
            "mode": self.mode, "esp_proposals": self.esp_proposals,
            "local_ts": self.local_ts, "remote_ts": self.remote_ts,
            "start_action": self.start_action, "dpd_action": self.dpd_action,
            "close_action": self.close_action, "rekey_time": self.rekey_time,
            "life_time": self.life_time, "rand_time": self.rand_time,
        }
        tree.update(self.options)
        return tree


@dataclass
class Connection:
    """One ``connections.<name>`` section (IKE_SA config plus its children)."""

    local_addrs: str
    remote_addrs: str = "%any"
    local_id: str | None = None
    remote_id: str | None = None
    auth: str = "psk"                      # local auth: psk | pubkey
    remote_auth: str | None = None         # defaults to ``auth``
    local_certs: str | None = None         # file name inside swanctl/x509
    proposals: str = "default"             # e.g. "aes256gcm16-prfsha256-x25519"
    childless: str | None = None           # allow | force | never
    fragmentation: str | None = None       # yes | accept | force | no
    encap: bool | None = None              # force UDP encapsulation (fake NAT-D)
    mobike: bool | None = False
    dpd_delay: str | None = None
    dpd_timeout: str | None = None
    rekey_time: str | None = None          # IKE rekey; "0" disables
    reauth_time: str | None = None
    over_time: str | None = None
    rand_time: str | None = None
    keyingtries: int | None = 1
    children: dict[str, Child] = field(default_factory=dict)
    options: Tree = field(default_factory=dict)

    def to_tree(self) -> Tree:
        tree: Tree = {
            "version": 2, "local_addrs": self.local_addrs, "remote_addrs": self.remote_addrs,
            "proposals": self.proposals, "childless": self.childless,
            "fragmentation": self.fragmentation, "encap": _yes_no(self.encap),
            "mobike": _yes_no(self.mobike), "dpd_delay": self.dpd_delay,
            "dpd_timeout": self.dpd_timeout, "rekey_time": self.rekey_time,
            "reauth_time": self.reauth_time, "over_time": self.over_time,
            "rand_time": self.rand_time, "keyingtries": self.keyingtries,
            "local": {"auth": self.auth, "id": self.local_id, "certs": self.local_certs},
            "remote": {"auth": self.remote_auth or self.auth, "id": self.remote_id},
            "children": {name: child.to_tree() for name, child in self.children.items()},
        }
        tree.update(self.options)
        return tree


# --- parsed list-sas -------------------------------------------------------------

@dataclass
class ChildSa:
    name: str
    uniqueid: str
    state: str                  # INSTALLED, REKEYED, DELETING...
    mode: str                   # TUNNEL | TRANSPORT
    protocol: str               # ESP | AH
    encap: bool                 # UDP encapsulated (NAT-T)
    spi_in: str
    spi_out: str
    encr_alg: str | None
    encr_keysize: str | None
    integ_alg: str | None
    dh_group: str | None
    local_ts: list[str]
    remote_ts: list[str]
    raw: Tree

    @classmethod
    def from_vici(cls, raw: Tree) -> "ChildSa":
        return cls(
            name=raw.get("name", ""), uniqueid=raw.get("uniqueid", ""),
            state=raw.get("state", ""), mode=raw.get("mode", ""),
            protocol=raw.get("protocol", ""), encap=raw.get("encap") == "yes",
            spi_in=raw.get("spi-in", ""), spi_out=raw.get("spi-out", ""),
            encr_alg=raw.get("encr-alg"), encr_keysize=raw.get("encr-keysize"),
            integ_alg=raw.get("integ-alg"), dh_group=raw.get("dh-group"),
            local_ts=list(raw.get("local-ts", [])), remote_ts=list(raw.get("remote-ts", [])),
            raw=raw)


@dataclass
class IkeSa:
    name: str
    uniqueid: str
    state: str                  # CONNECTING, ESTABLISHED, REKEYING, DELETING...
    initiator: bool
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    local_id: str
    remote_id: str
    spi_i: str
    spi_r: str
    encr_alg: str | None
    encr_keysize: str | None
    integ_alg: str | None
    prf_alg: str | None
    dh_group: str | None
    nat_local: bool             # this end is behind a NAT
    nat_remote: bool
    nat_any: bool
    children: list[ChildSa]
    raw: Tree

    @classmethod
    def from_vici(cls, name: str, raw: Tree) -> "IkeSa":
        children = raw.get("child-sas", {})
        return cls(
            name=name, uniqueid=raw.get("uniqueid", ""), state=raw.get("state", ""),
            initiator=raw.get("initiator") == "yes",
            local_host=raw.get("local-host", ""), local_port=int(raw.get("local-port", 0)),
            remote_host=raw.get("remote-host", ""),
            remote_port=int(raw.get("remote-port", 0)),
            local_id=raw.get("local-id", ""), remote_id=raw.get("remote-id", ""),
            spi_i=raw.get("initiator-spi", ""), spi_r=raw.get("responder-spi", ""),
            encr_alg=raw.get("encr-alg"), encr_keysize=raw.get("encr-keysize"),
            integ_alg=raw.get("integ-alg"), prf_alg=raw.get("prf-alg"),
            dh_group=raw.get("dh-group"),
            nat_local=raw.get("nat-local") == "yes", nat_remote=raw.get("nat-remote") == "yes",
            nat_any=raw.get("nat-any") == "yes",
            children=[ChildSa.from_vici(c) for c in children.values()
                      if isinstance(c, dict)],
            raw=raw)

    def child(self, name: str) -> ChildSa | None:
        """The first INSTALLED CHILD_SA of that config name, else any of that name."""
        named = [c for c in self.children if c.name == name]
        installed = [c for c in named if c.state == "INSTALLED"]
        return (installed or named or [None])[0]
