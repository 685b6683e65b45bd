"""Benchmark: bulk TCP over ESP negotiated by our sidecars vs the same ESP installed by hand.

Needs root and a kernel with ESP (the VM tier: `tests/vm/test_esp_throughput_vm.py` runs it
once; or boot the VM by hand, tests/vm/README.md). For each cipher, three namespace pairs
joined by veths:

  ours   two sidecars (standalone YAML, XFRM data plane) negotiate transport-mode ESP;
  hand   `ip xfrm state/policy add` with the same algorithm, key size, ESN and replay
         window as ours (transport mode, `required` policies, one reqid);
  plain  no XFRM at all (reference).

AES-GCM-256 runs over IPv4 and ChaCha20-Poly1305 over IPv6, so one pair of sidecars
serves both (one peering per family). Each measurement is one TCP connection that sends
for `seconds` (or `max_mb`), counted by the receiver from its first to its last byte.
ours and hand alternate, in changing order, for `rounds` rounds; the figure is the
ratio of their medians.

    sudo .venv/bin/python bench/bench_esp_throughput.py [--rounds 8] [--seconds 2]
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sidecar")]

from machine import cpu_model  # noqa: E402  (bench/, the script's own directory)

from tests.interop.harness.netns import Namespace, Topology  # noqa: E402
from tests.interop.harness.sidecar import Sidecar  # noqa: E402

PSK = "esp-bench-psk-0123456789abcdef-0123"
LEFT_ID, RIGHT_ID = "left.bench.mesh.test", "right.bench.mesh.test"
PORT = 5201
CHUNK = 256 * 1024
SIDECAR_START = 300.0  # seconds: Python start-up under software emulation on a loaded host


@dataclass(frozen=True)
class Cipher:
    label: str
    proposal: str  # ours, as a peering names it
    kernel_name: str  # ip xfrm's AEAD name
    key_bytes: int  # key + 4-byte salt
    family: int


CIPHERS = (
    Cipher("AES-GCM-256", "aes256gcm16-esn", "rfc4106(gcm(aes))", 36, socket.AF_INET),
    Cipher("ChaCha20-Poly1305", "chacha20poly1305-esn", "rfc7539esp(chacha20,poly1305)", 36, socket.AF_INET6),
)
# As the sidecar installs them (agent/xfrm_dataplane.py): ESN, replay window 128, ICV 128 bits.
REPLAY_WINDOW = 128
ICV_BITS = 128


@dataclass
class Result:
    cipher: str
    mbps: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "hand": [], "plain": []})

    def median(self, kind: str) -> float:
        return statistics.median(self.mbps[kind]) if self.mbps[kind] else 0.0

    @property
    def round_ratios(self) -> list[float]:
        return [o / h for o, h in zip(self.mbps["ours"], self.mbps["hand"], strict=True) if h]

    @property
    def ratio(self) -> float:
        """Median of the per-round ratios ours/hand."""
        return statistics.median(self.round_ratios) if self.round_ratios else 0.0


def address(ns: Namespace, family: int) -> str:
    return ns.ipv4 if family == socket.AF_INET else ns.ipv6


# -- one transfer ------------------------------------------------------------------------
def _receive(bind: str, family: int, port: int, timeout: float) -> tuple[int, float]:
    """Accept one connection and read it to the end: (bytes, seconds from first to last byte)."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((bind, port))
    listener.listen(1)
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    listener.close()
    conn.settimeout(timeout)
    buffer = bytearray(CHUNK)
    total, first, last = 0, None, 0.0
    with conn:
        while True:
            n = conn.recv_into(buffer)
            if not n:
                break
            last = time.monotonic()
            if first is None:
                first = last
            total += n
    return total, (last - first) if first is not None else 0.0


def _send(target: str, family: int, port: int, seconds: float, max_bytes: int) -> int:
    deadline = time.monotonic() + 10
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(60)
        try:
            sock.connect((target, port))
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    data = os.urandom(CHUNK)
    sent = 0
    end = time.monotonic() + seconds
    with sock:
        while time.monotonic() < end and sent < max_bytes:
            sock.sendall(data)
            sent += len(data)
    return sent


def transfer(sender: Namespace, receiver: Namespace, family: int, seconds: float, max_mb: int) -> tuple[int, float]:
    """One bulk TCP transfer; returns (bytes received, MB/s). Both ends in their own process."""
    out: dict[str, object] = {}

    def rx():
        try:
            out["rx"] = receiver.call(_receive, address(receiver, family), family, PORT, seconds + 60,
                                      timeout=seconds + 90)
        except BaseException as exc:  # reported below
            out["rx"] = exc

    thread = threading.Thread(target=rx)
    thread.start()
    sent = sender.call(_send, address(receiver, family), family, PORT, seconds, max_mb << 20, timeout=seconds + 90)
    thread.join(seconds + 120)
    received = out.get("rx")
    if not isinstance(received, tuple):
        raise RuntimeError(f"receiver failed: {received!r}")
    total, elapsed = received
    if total != sent:
        raise RuntimeError(f"sent {sent} bytes, received {total}")
    return total, total / elapsed / 1e6 if elapsed else 0.0


# -- the three set-ups ---------------------------------------------------------------------
def start_sidecars(topo: Topology, workdir: Path) -> tuple[Namespace, Namespace, list[Sidecar]]:
    pair = topo.pair(ipv6=True)
    sidecars = []
    for me, peer, mine, theirs in ((pair.left, pair.right, LEFT_ID, RIGHT_ID),
                                   (pair.right, pair.left, RIGHT_ID, LEFT_ID)):
        v6 = {"name": "v6", "authentication": "psk",
              "psk": [{"id": "k1", "value": base64.b64encode(PSK.encode()).decode()}],
              "proposals": {"esp": [CIPHERS[1].proposal]},
              "peers": [{"name": "peer", "addresses": [f"{peer.ipv6}/128"], "identities": [theirs]}]}
        sidecars.append(Sidecar(me, workdir, address=me.ipv4, addresses=(me.ipv6,), identity=mine,
                                peer_address=f"{peer.ipv4}/32", peer_identity=theirs, psk=PSK,
                                esp=CIPHERS[0].proposal, dataplane="xfrm", name=f"bench-{me.role}",
                                more_peerings=(v6,), log_level="info"))
    for s in sidecars:
        s.launch()
    for s in sidecars:
        s.wait_ready(SIDECAR_START)
    return pair.left, pair.right, sidecars


def negotiate(left: Namespace, right: Namespace, family: int) -> float:
    """Trigger IKE through the kernel's ACQUIRE with a ping; seconds until it is answered."""
    six = ["-6"] if family == socket.AF_INET6 else []
    started = time.monotonic()
    left.run(["ping", *six, "-c", "2", "-w", "120", "-i", "0.2", address(right, family)], timeout=150)
    return time.monotonic() - started


def install_by_hand(left: Namespace, right: Namespace, cipher: Cipher) -> None:
    family = cipher.family
    plen = 32 if family == socket.AF_INET else 128
    states = []
    for (src, dst), spi in (((left, right), 0x1001), ((right, left), 0x2002)):
        key = os.urandom(cipher.key_bytes).hex()
        states.append(f"xfrm state add src {address(src, family)} dst {address(dst, family)} proto esp spi {spi:#x}"
                      f" reqid 1 mode transport replay-window {REPLAY_WINDOW} flag esn"
                      f" aead '{cipher.kernel_name}' 0x{key} {ICV_BITS}")
    for here, there in ((left, right), (right, left)):
        a, b = address(here, family), address(there, family)
        commands = states + [
            f"xfrm policy add src {a}/{plen} dst {b}/{plen} dir out tmpl src {a} dst {b} proto esp reqid 1 mode transport",
            f"xfrm policy add src {b}/{plen} dst {a}/{plen} dir in tmpl src {b} dst {a} proto esp reqid 1 mode transport",
        ]
        here.run(["ip", "-batch", "-"], input="\n".join(commands) + "\n")  # keys never on a command line


def describe_sas(ns: Namespace) -> list[str]:
    """`ip -s xfrm state` without key material: what differs between ours and hand shows here."""
    text = ns.run(["ip", "-s", "xfrm", "state"]).stdout
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith(("aead", "auth", "enc"))]


def esp_bytes(ns: Namespace) -> int:
    """Bytes the kernel counted on this namespace's SAs (`ip -s xfrm state` current lifetime)."""
    total = 0
    for line in ns.run(["ip", "-s", "xfrm", "state"]).stdout.splitlines():
        words = line.split()  # "  1234(bytes), 5(packets)" under "lifetime current:"
        if words and words[0].endswith("(bytes),") and words[0][:-len("(bytes),")].isdigit():
            total += int(words[0][:-len("(bytes),")])
    return total


# -- the run ---------------------------------------------------------------------------------
def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}"


def run(rounds: int, seconds: float, max_mb: int, workdir: Path, log=print) -> list[Result]:
    log(f"machine: {machine()}")
    with Topology() as t_ours, Topology() as t_hand, Topology() as t_plain:
        left, right, sidecars = start_sidecars(t_ours, workdir)
        try:
            for cipher in CIPHERS:
                log(f"{cipher.label}: first packet to answered ping (IKE via ACQUIRE): "
                    f"{negotiate(left, right, cipher.family):.1f} s")
            hand = t_hand.pair(ipv6=True)
            plain = t_plain.pair(ipv6=True)
            for cipher in CIPHERS:
                install_by_hand(hand.left, hand.right, cipher)
            for name, ns in (("ours", left), ("hand", hand.left)):
                log(f"SAs {name} (left, keys left out):\n  " + "\n  ".join(describe_sas(ns)))
            setups = {"ours": (left, right), "hand": (hand.left, hand.right), "plain": (plain.left, plain.right)}
            results = [Result(c.label) for c in CIPHERS]
            for number in range(rounds):
                order = ("ours", "hand", "plain") if number % 2 == 0 else ("hand", "ours", "plain")
                for cipher, result in zip(CIPHERS, results, strict=True):  # ours and hand back to back
                    for kind in order:
                        sender, receiver = setups[kind]
                        before = esp_bytes(receiver)
                        total, mbps = transfer(sender, receiver, cipher.family, seconds, max_mb)
                        if kind != "plain" and esp_bytes(receiver) - before < total:
                            raise RuntimeError(f"{kind} {cipher.label}: the transfer did not go over ESP")
                        result.mbps[kind].append(mbps)
                        log(f"round {number + 1} {cipher.label:18} {kind:5} {total / 1e6:7.1f} MB {mbps:7.2f} MB/s")
        finally:
            for s in sidecars:
                s.stop()
    log("")
    log(f"{'cipher':18} {'ours MB/s':>10} {'hand MB/s':>10} {'plain MB/s':>11} {'ours/hand':>10}  per round")
    for r in results:
        log(f"{r.cipher:18} {r.median('ours'):10.2f} {r.median('hand'):10.2f} {r.median('plain'):11.2f} "
            f"{r.ratio:10.3f}  " + " ".join(f"{x:.2f}" for x in r.round_ratios))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="per transfer")
    parser.add_argument("--max-mb", type=int, default=1024, help="per transfer")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, XFRM)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="esp-bench-") as workdir:
        run(args.rounds, args.seconds, args.max_mb, Path(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
