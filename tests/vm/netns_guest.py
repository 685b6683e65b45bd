"""Network namespaces for data-plane tests: two peers on a veth, ESP set up by hand,
ping and TCP between them, and tcpdump captures classified as ESP or plaintext.

Meant for the VM tier (a kernel with ESP) but nothing here is VM-specific: it needs root,
iproute2, tcpdump and ping. Every subprocess is bounded in time, and the context
managers remove what they created even when a test fails.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.vm.pcap_reader import Packet, TrafficCounts, count_traffic, read_pcap

DEFAULT_TIMEOUT = 20.0
T = TypeVar("T")
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


class NetnsError(RuntimeError):
    """A command in a namespace failed or did not answer in time."""


def missing_requirements() -> list[str]:
    """What this machine lacks for namespace tests (empty when all is there)."""
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [tool for tool in ("ip", "tcpdump", "ping") if shutil.which(tool) is None]
    return missing


def unique_prefix(tag: str = "im") -> str:
    """A namespace name prefix unique to this process and call."""
    return f"{tag}{os.getpid()}x{next(_counter)}"


def run(
    argv: Sequence[str], *, input: str | bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT, check: bool = True,
) -> subprocess.CompletedProcess:
    """Run a command; text in and out unless `input` is bytes. Raises NetnsError."""
    binary = isinstance(input, bytes)
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=not binary, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{argv[0]}... did not finish within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if binary else proc.stderr
        raise NetnsError(f"{' '.join(argv)} exited {proc.returncode}: {err.strip()}")
    return proc


def wait_for_line(stream, needle: str, timeout: float) -> str | None:
    """Read lines from a pipe until one contains `needle`; None on EOF or timeout."""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    buffered = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buffered += chunk
        for line in buffered.decode(errors="replace").splitlines():
            if needle in line:
                return line
    return None


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Signal a process, then kill it if it has not exited within `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


@dataclass(frozen=True)
class Netns:
    name: str

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        return run(self.argv(*command), **kwargs)

    def popen(self, *command: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*command), **kwargs)

    def ip_batch(self, commands: Sequence[str]) -> None:
        """Run `ip` commands in this namespace, fed on stdin so that keys never appear
        in a process list or in an error message."""
        run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(commands) + "\n")

    def call(
        self, function: Callable[..., T], *args: object, timeout: float = DEFAULT_TIMEOUT
    ) -> T:
        """Call `function(*args)` in a short-lived thread that has entered this namespace.

        A network namespace belongs to a thread, and a socket to the namespace it was
        made in: sockets created here keep working in this namespace after the thread
        has gone, while the caller's own namespace never changes.
        """
        outcome: dict[str, object] = {}

        def body() -> None:
            try:
                _enter_netns(self.name)
                outcome["value"] = function(*args)
            except BaseException as exc:  # handed to the caller below
                outcome["error"] = exc

        thread = threading.Thread(target=body, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise NetnsError(f"call in {self.name} did not finish within {timeout:.0f}s")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]

    def xfrm_stat(self) -> dict[str, int]:
        """This namespace's /proc/net/xfrm_stat counters."""
        text = self.call(Path("/proc/thread-self/net/xfrm_stat").read_text)
        return {name: int(value) for name, value in (line.split() for line in text.splitlines())}


def _enter_netns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            raise NetnsError(f"setns({name}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Endpoint:
    netns: Netns
    ifname: str
    mac: str
    ipv4: str
    ipv6: str

    def address(self, family: int) -> str:
        return self.ipv4 if family == socket.AF_INET else self.ipv6


@dataclass(frozen=True)
class PeerPair:
    left: Endpoint
    right: Endpoint


@contextmanager
def peer_pair(prefix: str | None = None) -> Iterator[PeerPair]:
    """Two namespaces joined by a veth, with IPv4 and IPv6 addresses and static
    neighbour entries (no ARP or NDP on the wire, so captures hold only test traffic)."""
    prefix = prefix or unique_prefix()
    left = Endpoint(Netns(f"{prefix}-l"), "eth0", "02:77:00:00:00:01", "10.77.0.1", "fd00:77::1")
    right = Endpoint(Netns(f"{prefix}-r"), "eth0", "02:77:00:00:00:02", "10.77.0.2", "fd00:77::2")
    created: list[Netns] = []
    try:
        for end in (left, right):
            run(["ip", "netns", "add", end.netns.name])
            created.append(end.netns)
        left.netns.ip_batch([
            f"link add {left.ifname} address {left.mac} type veth peer name {right.ifname}"
            f" address {right.mac} netns {right.netns.name}"
        ])
        for end, peer in ((left, right), (right, left)):
            end.netns.ip_batch([
                "link set lo up",
                f"link set {end.ifname} up",
                f"addr add {end.ipv4}/24 dev {end.ifname}",
                f"addr add {end.ipv6}/64 dev {end.ifname} nodad",
                f"neigh replace {peer.ipv4} lladdr {peer.mac} dev {end.ifname} nud permanent",
                f"neigh replace {peer.ipv6} lladdr {peer.mac} dev {end.ifname} nud permanent",
            ])
        yield PeerPair(left, right)
    finally:
        for netns in created:
            run(["ip", "netns", "del", netns.name], check=False)


@dataclass(frozen=True)
class Aead:
    """An ESP AEAD as `ip xfrm` names it; the key includes the 4-byte salt."""

    kernel_name: str
    key_bytes: int
    icv_bits: int = 128


AES_GCM_128 = Aead("rfc4106(gcm(aes))", 16 + 4)
AES_GCM_256 = Aead("rfc4106(gcm(aes))", 32 + 4)
CHACHA20_POLY1305 = Aead("rfc7539esp(chacha20,poly1305)", 32 + 4)


@dataclass(frozen=True)
class TransportEsp:
    """The SPIs of a hand-made pair of transport-mode SAs."""

    spi_left_to_right: int
    spi_right_to_left: int


def install_transport_esp(
    pair: PeerPair, family: int, aead: Aead, *,
    spis: tuple[int, int] = (0x1000, 0x2000), reqid: int = 1,
) -> TransportEsp:
    """Transport-mode ESP between the pair's addresses of `family`, with fresh random
    keys, SAs in both namespaces and `required` policies in and out on both sides."""
    plen = 32 if family == socket.AF_INET else 128
    sas = []
    directions = ((pair.left, pair.right), (pair.right, pair.left))
    for (src, dst), spi in zip(directions, spis, strict=True):
        key = os.urandom(aead.key_bytes).hex()
        sas.append(
            f"xfrm state add src {src.address(family)} dst {dst.address(family)} proto esp"
            f" spi {spi:#x} reqid {reqid} mode transport replay-window 32"
            f" aead '{aead.kernel_name}' 0x{key} {aead.icv_bits}"
        )
    for local, remote in directions:
        here, there = local.address(family), remote.address(family)
        local.netns.ip_batch([
            *sas,
            f"xfrm policy add src {here}/{plen} dst {there}/{plen} dir out"
            f" tmpl src {here} dst {there} proto esp reqid {reqid} mode transport",
            f"xfrm policy add src {there}/{plen} dst {here}/{plen} dir in"
            f" tmpl src {there} dst {here} proto esp reqid {reqid} mode transport",
        ])
    return TransportEsp(*spis)


def flush_states(pair: PeerPair) -> None:
    """Remove every SA on both sides; policies stay."""
    for end in (pair.left, pair.right):
        end.netns.ip_batch(["xfrm state flush"])


def flush_xfrm(netns: Netns) -> None:
    """Remove every SA and policy in one namespace."""
    netns.ip_batch(["xfrm state flush", "xfrm policy flush"])


def ping(source: Endpoint, destination: str, count: int = 3, deadline: float = 5.0) -> bool:
    """True if all `count` echo requests were answered within `deadline` seconds."""
    proc = source.netns.run(
        "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-w", str(int(deadline)),
        destination, check=False, timeout=deadline + 10,
    )
    return proc.returncode == 0


def tcp_transfer(
    server: Endpoint, client: Endpoint, family: int, payload: bytes,
    port: int = 5001, timeout: float = 10.0,
) -> bytes:
    """Send `payload` over TCP from client to server; return the SHA-256 digest the
    server computed over what it received. Raises NetnsError if the transfer fails.

    Both ends run in this process (sockets made inside the namespaces), which under
    software emulation is far quicker than starting interpreters.
    """
    listener = server.netns.call(_listening_socket, family, server.address(family), port)
    received: dict[str, bytes | BaseException] = {}
    with listener:
        listener.settimeout(timeout)
        accepter = threading.Thread(target=_hash_one_connection, args=(listener, timeout, received))
        accepter.start()
        try:
            target = (server.address(family), port)
            answer = _send_and_read_digest(client, family, target, payload, timeout)
        except OSError as exc:
            route = f"{client.netns.name} -> {server.netns.name}"
            raise NetnsError(f"TCP transfer {route} failed: {exc!r}") from None
        finally:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() if the client never came
            accepter.join(timeout + 5)
    if len(answer) != hashlib.sha256().digest_size:
        raise NetnsError(f"TCP server answered {len(answer)} bytes: {received.get('error')!r}")
    return answer


def _listening_socket(family: int, address: str, port: int) -> socket.socket:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1)
    return listener


def _hash_one_connection(listener: socket.socket, timeout: float, out: dict) -> None:
    try:
        conn, _ = listener.accept()
    except OSError as exc:
        out["error"] = exc
        return
    with conn:
        conn.settimeout(timeout)
        digest = hashlib.sha256()
        try:
            while chunk := conn.recv(65536):
                digest.update(chunk)
            conn.sendall(digest.digest())
        except OSError as exc:
            out["error"] = exc


def _send_and_read_digest(
    client: Endpoint, family: int, server: tuple[str, int], payload: bytes, timeout: float
) -> bytes:
    with client.netns.call(socket.socket, family, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(server)
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while len(answer) < 32 and (chunk := conn.recv(64)):
            answer += chunk
    return answer


class Capture:
    """tcpdump on one interface of a namespace, written to a pcap file.

    Use as a context manager: capturing has started when the block is entered and
    every packet is in the file once it is left.
    """

    def __init__(self, netns: Netns, ifname: str, pcap: Path, snaplen: int = 256) -> None:
        self.netns, self.ifname, self.pcap, self.snaplen = netns, ifname, Path(pcap), snaplen
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Capture:
        self._proc = self.netns.popen(
            "tcpdump", "-i", self.ifname, "-n", "-U", "--immediate-mode", "-Z", "root",
            "-s", str(self.snaplen), "-w", str(self.pcap),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        if wait_for_line(self._proc.stderr, "listening on", DEFAULT_TIMEOUT) is None:
            self.stop()
            raise NetnsError(f"tcpdump on {self.netns.name}/{self.ifname} did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, settle: float = 0.3) -> None:
        if self._proc is None:
            return
        time.sleep(settle)  # let packets in flight reach the capture
        stop_process(self._proc, signal.SIGINT)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def packets(self) -> list[Packet]:
        return read_pcap(self.pcap)

    def traffic(self, peer_a: str, peer_b: str) -> TrafficCounts:
        """ESP and plaintext packets captured between two addresses."""
        return count_traffic(self.packets(), peer_a, peer_b)
