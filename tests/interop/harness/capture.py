"""Packet capture on a namespace interface (tcpdump) and IKE decoding (tshark)."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipsec_mesh_operator.netns import stop_process

from .charon import wait_for
from .netns import Namespace

IKE_FILTER = "udp port 500 or udp port 4500 or esp"
# IKEv2 exchange types (RFC 7296 / IANA) as tshark prints them numerically.
EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
             43: "IKE_INTERMEDIATE"}
# Payload type numbers used by the summaries.
PAYLOAD_NOTIFY = 41
PAYLOAD_SKF = 53          # Encrypted and Authenticated Fragment (RFC 7383)
NOTIFY_COOKIE = 16390


class CaptureError(RuntimeError):
    """tcpdump did not start, or tshark could not decode the capture."""


@dataclass
class IkeMessage:
    """One IKEv2 datagram as seen on the wire (a fragment counts as one)."""

    frame: int
    src: str
    dst: str
    sport: int
    dport: int
    exchange: str             # IKE_SA_INIT, IKE_AUTH, ... or the number as text
    response: bool
    initiator: bool           # the I flag
    message_id: int
    spi_i: str
    spi_r: str
    payloads: list[int] = field(default_factory=list)   # every payload type, in order
    notifies: list[int] = field(default_factory=list)   # notify message types
    fragment: tuple[int, int] | None = None             # (number, total) for SKF

    @property
    def non_esp_marker(self) -> bool:
        """Sent on UDP 4500, i.e. after the switch to the NAT-T port."""
        return 4500 in (self.sport, self.dport)


class Capture:
    """``start()`` tcpdump before the action, ``stop()`` after, then decode."""

    def __init__(self, ns: Namespace, path: Path, iface: str = "eth0",
                 bpf: str = IKE_FILTER) -> None:
        self.ns, self.path, self.iface, self.bpf = ns, Path(path), iface, bpf
        self.stderr_path = self.path.with_suffix(".tcpdump.log")
        self.process: subprocess.Popen | None = None
        self._decoded: dict[str, list[dict[str, Any]]] = {}   # tshark takes ~1 s a run

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> "Capture":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "wb") as stderr:
            # Immediate mode and -U: every packet reaches the file before SIGINT.
            self.process = self.ns.popen(
                ["tcpdump", "-n", "-U", "--immediate-mode", "-s", "0", "-i", self.iface,
                 "-w", str(self.path), self.bpf], stdout=subprocess.DEVNULL, stderr=stderr)
        wait_for(self._listening, timeout, 0.05, f"tcpdump on {self.ns.role}/{self.iface}")
        return self

    def _listening(self) -> bool:
        text = self.stderr_path.read_text(errors="replace")
        if self.process is not None and self.process.poll() is not None:
            raise CaptureError(f"tcpdump exited: {text.strip()}")
        return "listening on" in text

    def stop(self, settle: float = 0.3, timeout: float = 5.0) -> None:
        """Let in-flight packets arrive (``settle`` s), then SIGINT so tcpdump
        flushes; safe to call twice."""
        if self.process is None or self.process.poll() is not None:
            return
        time.sleep(settle)
        stop_process(self.process, signal.SIGINT, timeout)

    def tshark(self, *args: str, timeout: float = 60.0) -> str:
        """Run tshark on the capture file (e.g. ``"-V", "-Y", "isakmp"``)."""
        proc = subprocess.run(["tshark", "-n", "-r", str(self.path), *args],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise CaptureError(f"tshark {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def packets(self, display_filter: str = "isakmp") -> list[dict[str, Any]]:
        """tshark's JSON ``_source.layers`` of each matching frame (cached once the
        capture is stopped)."""
        stopped = self.process is not None and self.process.poll() is not None
        if stopped and display_filter in self._decoded:
            return self._decoded[display_filter]
        out = self.tshark("-T", "json", "--no-duplicate-keys", "-Y", display_filter)
        try:
            frames = json.loads(out or "[]")
        except json.JSONDecodeError as exc:
            raise CaptureError(f"tshark JSON unreadable: {exc}") from None
        layers = [frame["_source"]["layers"] for frame in frames]
        if stopped:
            self._decoded[display_filter] = layers
        return layers

    def ike_messages(self) -> list[IkeMessage]:
        return [message for layers in self.packets() if (message := summarize(layers))]

    def count_esp(self) -> int:
        """ESP packets seen (raw ESP, or ESP in UDP 4500)."""
        return len(self.packets("esp"))

    def cookie_exchange(self) -> bool:
        """An IKE_SA_INIT response carried COOKIE and a request echoed it."""
        init = [m for m in self.ike_messages() if m.exchange == "IKE_SA_INIT"]
        asked = any(m.response and NOTIFY_COOKIE in m.notifies for m in init)
        echoed = any(not m.response and m.payloads[:1] == [PAYLOAD_NOTIFY]
                     and m.notifies[:1] == [NOTIFY_COOKIE] for m in init)
        return asked and echoed


def summarize(layers: dict[str, Any]) -> IkeMessage | None:
    """Flatten one frame's tshark layers into an ``IkeMessage``."""
    isakmp = layers.get("isakmp")
    if isinstance(isakmp, list):  # tshark lists repeated layers
        isakmp = isakmp[0]
    if not isinstance(isakmp, dict):
        return None
    ip = layers.get("ip") or layers.get("ipv6") or {}
    udp = layers.get("udp", {})
    flags = isakmp.get("isakmp.flags_tree", {})
    exchange = _int(isakmp.get("isakmp.exchangetype"))
    message = IkeMessage(
        frame=_int(layers.get("frame", {}).get("frame.number")),
        src=ip.get("ip.src") or ip.get("ipv6.src", ""),
        dst=ip.get("ip.dst") or ip.get("ipv6.dst", ""),
        sport=_int(udp.get("udp.srcport")), dport=_int(udp.get("udp.dstport")),
        exchange=EXCHANGES.get(exchange, str(exchange)),
        response=flags.get("isakmp.flag_r") in ("1", "True", "true"),
        initiator=flags.get("isakmp.flag_i") in ("1", "True", "true"),
        message_id=_int(isakmp.get("isakmp.messageid")),
        spi_i=isakmp.get("isakmp.ispi", "").replace(":", ""),
        spi_r=isakmp.get("isakmp.rspi", "").replace(":", ""))
    types = _as_list(isakmp.get("isakmp.typepayload"))
    trees = _as_list(isakmp.get("isakmp.typepayload_tree"))
    for ptype, tree in zip(types, trees, strict=False):  # top level only: SA nests proposals
        message.payloads.append(_int(ptype))
        if "isakmp.notify.msgtype" in tree:
            message.notifies.append(_int(tree["isakmp.notify.msgtype"]))
        if _int(ptype) == PAYLOAD_SKF:
            message.fragment = (_int(tree.get("isakmp.frag.number")),
                                _int(tree.get("isakmp.frag.total")))
    return message


def _as_list(value: Any) -> list[Any]:
    """tshark (--no-duplicate-keys) gives one value bare and repeated ones as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _int(value: Any) -> int:
    if isinstance(value, list):
        value = value[0] if value else 0
    try:
        return int(str(value), 0)
    except ValueError:
        return -1
