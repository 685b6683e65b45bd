"""The sidecar process: an event loop (aio) around the sans-IO IKE endpoint and a data plane.

Order matters for zero loss and fail-closed behaviour:
- at start the data plane puts its policies in place (blocking under `require`)
  before any IKE socket opens; readiness is reported only after that;
- after every call into the endpoint, events (SA installs) are applied BEFORE the
  datagrams they belong to are sent.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Callable

from .. import aio
from ..ike import (
    DROP_COUNTERS,
    NON_ESP_MARKER,
    ChildSaActivityQuery,
    ChildSaDeleted,
    ChildSaEncapChanged,
    ChildSaFailed,
    ChildSaInboundQuery,
    ChildSaInstallInbound,
    ChildSaInstallOutbound,
    ChildSaOutboundRetired,
    IkeEndpoint,
    IkeSaClosed,
    IkeSaEstablished,
    IkeState,
    NegotiationFailed,
    notify_name,
    strip_non_esp_marker,
)
from .config import SidecarSettings
from .dataplane import Acquire, DataPlane, HardExpire, NatMapping, PolicyExpired, SoftExpire
from .logs import LOG_WINDOW, flush_rate_limited
from .metrics import Metrics
from .peers import PeerSet

log = logging.getLogger("ipsec_mesh.agent")

#: Peers whose last failed negotiation the status keeps (oldest forgotten first).
MAX_FAILURE_RECORDS = 256
MAX_FAILURE_MESSAGE = 200
#: After the kernel refuses a CHILD_SA's SAs: seconds before a new CHILD_SA is tried,
#: doubled per consecutive failure with that peer, up to the maximum.
INSTALL_RETRY_BASE = 5.0
INSTALL_RETRY_MAX = 300.0
#: `initiate: peers`: IKE SA ends after which a pod peer is connected again (with the same backoff).
RECONNECT_REASONS = frozenset({"timeout", "dead-peer"})


class _IkeSocket:
    """One non-blocking UDP socket, read straight from the event loop.

    A datagram transport (asyncio's) wakes up once per datagram; under load, draining every
    datagram queued at a wake-up (up to READ_BATCH) and flushing the endpoint once for
    the batch saves the per-wake-up overhead. Sends go straight to the socket; if its
    buffer is full they wait in a queue drained when the socket becomes writable.
    """

    READ_BATCH = 64  # bounds the time spent on one socket before others get a turn
    RECV_SIZE = 65535
    MAX_UNSENT = 1024  # beyond this a full socket drops datagrams (IKE retransmits) rather than grow

    def __init__(self, agent: "Agent", loop: aio.EventLoop, sock: socket.socket,
                 local: tuple[str, int], natt: bool):
        self.agent = agent
        self.loop = loop
        self.sock = sock
        self.local = local
        self.natt = natt
        self._unsent: collections.deque[tuple[bytes, tuple]] = collections.deque()
        self.closed = False

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        received = False
        try:
            for _ in range(self.READ_BATCH):
                try:
                    data, addr = self.sock.recvfrom(self.RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                    log.debug("IKE socket %s: %s", self.local, exc)
                    continue
                if self.natt:
                    stripped = strip_non_esp_marker(data)
                    if stripped is None:
                        continue  # a NAT keepalive (0xff), or ESP the kernel did not take
                    data = stripped
                received = True
                self.agent.receive_only(data, self.local, (addr[0], addr[1]))
        finally:
            if received:  # even if one datagram raised: what the others produced goes out
                self.agent.flush()

    def sendto(self, data: bytes, remote: tuple) -> None:
        if not self._unsent:
            try:
                self.sock.sendto(data, remote)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.sock.fileno(), self._write_ready)
            except OSError as exc:
                log.debug("IKE socket %s: sending to %s: %s", self.local, remote[0], exc)
                return
        if len(self._unsent) >= self.MAX_UNSENT:
            log.debug("IKE socket %s: send queue full, dropped a datagram to %s", self.local, remote[0])
            return
        self._unsent.append((data, remote))

    def _write_ready(self) -> None:
        while self._unsent:
            data, remote = self._unsent[0]
            try:
                self.sock.sendto(data, remote)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("IKE socket %s: sending to %s: %s", self.local, remote[0], exc)
            self._unsent.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self._unsent:
            self.loop.remove_writer(self.sock.fileno())
            self._unsent.clear()
        self.sock.close()


class Agent:
    def __init__(self, config: SidecarSettings, dataplane: DataPlane, peers: PeerSet):
        self.config = config
        self.dataplane = dataplane
        self.peers = peers
        self.metrics = Metrics()
        #: Called after a flush that changed SAs or recorded a failure (mesh mode reports status).
        self.on_change: Callable[[], None] | None = None
        self.loop: aio.EventLoop | None = None
        ike = config.ike
        self.endpoint = IkeEndpoint(peers.lookup, cookie_threshold=ike.cookie_threshold,
                                    cookie_threshold_per_source=ike.cookie_threshold_per_source,
                                    half_open_limit=ike.half_open_limit,
                                    half_open_limit_per_source=ike.half_open_limit_per_source)
        self.sockets: dict[tuple[str, int], _IkeSocket] = {}
        self.policies_ready = False
        #: remote address -> the kernel's refusal of the last CHILD_SA with it, until one installs.
        self.install_failures: dict[str, dict] = {}
        self.install_retry_base = INSTALL_RETRY_BASE
        self.install_retry_max = INSTALL_RETRY_MAX
        self._not_installed: dict[int, str] = {}  # inbound SPI of a refused CHILD_SA -> kernel error
        self._install_retries: dict[str, aio.TimerHandle] = {}
        #: `initiate: peers`: remote -> (consecutive failed connects, the timer of the next).
        self.connect_retry_base = INSTALL_RETRY_BASE
        self._connect_retries: dict[str, tuple[int, aio.TimerHandle | None]] = {}
        self.started_at = time.time()
        self._timer: aio.TimerHandle | None = None
        self._summary_timer: aio.TimerHandle | None = None
        self._drops_logged: dict[str, int] = {}
        self._stopping = aio.Event()
        #: remote address -> its last failed negotiation since the last success (for `ipsec-mesh explain`).
        self.last_failures: collections.OrderedDict[str, dict] = collections.OrderedDict()

    @property
    def ready(self) -> bool:
        """Policies in place, and no peer whose latest CHILD_SA the kernel refused: readiness
        never claims that traffic is protected when the kernel could not install the SAs."""
        return self.policies_ready and not self.install_failures

    # -- inputs -----------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.time()

    def receive_only(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        """Hand a datagram to the endpoint without flushing (the caller flushes a batch)."""
        self.endpoint.receive(data, local, remote, self.now())

    def initiate(self, remote: str, *, replaces_kernel_sas: bool = False) -> None:
        local = self.peers.local_address_for(remote)
        config = self.peers.lookup(local, remote) if local else None
        if config is None:
            log.warning("cannot initiate to %s: not in the peer set", remote)
            return
        ends = (local, self.config.ike.port), (remote, self.config.ike.port)
        if replaces_kernel_sas:
            self.endpoint.initiate(config, *ends, self.now(), config.children[0], replaces_kernel_sas=True)
        else:
            self.endpoint.acquire(config, *ends, self.now(), config.children[0])
        self.flush()

    def _on_dataplane_readable(self) -> None:
        for event in self.dataplane.read_events():
            now = self.now()
            if isinstance(event, Acquire):
                self.metrics.acquires.inc()
                if event.remote in self._install_retries:
                    continue  # the kernel refused the last SAs: the retry timer tries again
                local = event.local or self.peers.local_address_for(event.remote)
                config = self.peers.lookup(local, event.remote) if local else None
                if config is None:
                    continue
                self.endpoint.acquire(config, (local, self.config.ike.port),
                                      (event.remote, self.config.ike.port), now, config.children[0])
            elif isinstance(event, SoftExpire):
                self.endpoint.rekey_child(event.inbound_spi, now)
            elif isinstance(event, HardExpire):
                self.endpoint.delete_child(event.inbound_spi, now, "expired")
            elif isinstance(event, NatMapping):
                result = self.endpoint.nat_mapping_changed(event.inbound_spi, (event.remote, event.port), now)
                self.metrics.nat_mappings.labels(result).inc()
            elif isinstance(event, PolicyExpired):
                self.metrics.policy_expires.labels("hard" if event.hard else "soft").inc()
        self.flush()

    def _on_timer(self) -> None:
        self._timer = None
        self.endpoint.tick(self.now())
        self.flush()

    # -- outputs ----------------------------------------------------------------------
    def flush(self) -> None:
        """Apply events to the data plane, then send datagrams, then re-arm the timer."""
        changed = False
        # Applying may make more (a refused install deletes its CHILD_SA); each round handles
        # the events the previous one made, and those end it (a delete installs nothing).
        for _ in range(4):
            events = self.endpoint.events()
            if not events:
                break
            changed = True
            for event in events:
                self._apply(event)
        for d in self.endpoint.datagrams():
            sock = self.sockets.get(d.local)
            if sock is None or sock.closed:
                log.warning("no IKE socket bound to %s:%d", *d.local)
                continue
            payload = d.data if not sock.natt or d.data == b"\xff" else NON_ESP_MARKER + d.data
            sock.sendto(payload, d.remote)
        self._arm_timer()
        if changed and self.on_change is not None:
            self.on_change()

    def _apply(self, event) -> None:
        m = self.metrics
        try:
            if isinstance(event, (ChildSaInstallInbound, ChildSaInstallOutbound)):
                self._install(event)
            elif isinstance(event, ChildSaEncapChanged):
                self.dataplane.update_encap(event.child)
            elif isinstance(event, ChildSaOutboundRetired):
                self.dataplane.retire_outbound(event)
            elif isinstance(event, ChildSaActivityQuery):
                packets = self.dataplane.packets(event)
                if packets is not None:  # None: no kernel to ask (data plane `none`)
                    m.inactivity_checks.labels(self.endpoint.child_activity(event.inbound_spi, packets,
                                                                            self.now())).inc()
            elif isinstance(event, ChildSaInboundQuery):
                inbound = self.dataplane.inbound_bytes(event)
                if inbound is not None:  # None: liveness rests on IKE alone
                    result = self.endpoint.child_inbound_bytes(event.inbound_spi, inbound, self.now())
                    if not event.handover:  # the metric counts liveness checks only
                        m.liveness_checks.labels(result).inc()
            elif isinstance(event, ChildSaDeleted):
                self._not_installed.pop(event.inbound_spi, None)
                self.dataplane.remove(event)
            elif isinstance(event, IkeSaEstablished):
                (m.ike_rekeys if event.rekeyed_from else m.ike_established).inc()
                self.last_failures.pop(event.remote_addr, None)
                self._cancel_reconnect(event.remote_addr)
            elif isinstance(event, IkeSaClosed):
                m.ike_closed.labels(event.reason).inc()
                if event.reason in RECONNECT_REASONS and self.config.initiate_peers:
                    self._schedule_reconnect(event.remote_addr)
            elif isinstance(event, NegotiationFailed):
                m.failures.labels(_failure_reason(event.reason, event.notify)).inc()
                log.warning("negotiation with %s failed: %s", event.remote_addr, event.reason)
                self._record_failure(event.remote_addr, event.reason, event.notify)
            elif isinstance(event, ChildSaFailed):
                m.failures.labels(_failure_reason(event.reason, event.notify)).inc()
                remote = self._remote_of(event.ike_sa)
                if remote is not None:
                    self._record_failure(remote, event.reason, event.notify)
        except Exception:
            # A data plane failure must not take the IKE side down; it is counted and logged.
            m.failures.labels("dataplane").inc()
            log.exception("data plane failed to apply %s", type(event).__name__)

    def _install(self, event) -> None:
        """Put a CHILD_SA's half into the kernel; if the kernel refuses, say so everywhere."""
        child = event.child
        if child.inbound_spi in self._not_installed:
            return  # its inbound half was refused: sending on it would only reach a dead end
        inbound = isinstance(event, ChildSaInstallInbound)
        try:
            (self.dataplane.install_inbound if inbound else self.dataplane.install_outbound)(child)
        except Exception as exc:
            self._install_refused(child, exc)
            return
        if inbound:
            if event.rekey_of is not None:
                self.metrics.child_rekeys.inc()
            return
        self.metrics.child_established.inc()
        if self.install_failures.pop(child.remote_addr, None) is not None:
            log.info("CHILD_SA %s with %s installed after earlier refusals", child.name, child.remote_addr)
        timer = self._install_retries.pop(child.remote_addr, None)
        if timer is not None:
            timer.cancel()

    def _install_refused(self, child, exc: Exception) -> None:
        """The kernel refused an SA: the CHILD_SA is deleted (the peer must not send into a
        black hole), shown as not installed until its delete ends, kept out of readiness, and
        a new one is tried after a delay that doubles per consecutive refusal."""
        remote, error = child.remote_addr, str(exc)[:MAX_FAILURE_MESSAGE]
        self.metrics.failures.labels("dataplane").inc()
        self._not_installed[child.inbound_spi] = error
        count = self.install_failures.get(remote, {}).get("count", 0) + 1
        delay = min(self.install_retry_base * 2 ** (count - 1), self.install_retry_max)
        self.install_failures[remote] = {"child": child.name, "error": error, "at": round(time.time(), 1),
                                         "count": count, "retry_in": delay}
        self._record_failure(remote, f"CHILD_SA {child.name} not installed: {error}", None, reason="dataplane")
        log.error("CHILD_SA %s with %s not installed (%s): deleting it, next try in %.0fs", child.name, remote,
                  error, delay)
        now = self.now()
        self.endpoint.delete_child(child.inbound_spi, now, "install-failed")
        previous = self._install_retries.pop(remote, None)
        if previous is not None:
            previous.cancel()
        self._install_retries[remote] = self.loop.call_later(delay, self._retry_install, remote)

    def _retry_install(self, remote: str) -> None:
        self._install_retries.pop(remote, None)
        if remote in self.install_failures and self.peers.entry_for(remote) is not None:
            self.initiate(remote)

    def _connect_pod_peers(self, remotes: list[str]) -> None:
        """`initiate: peers`: the lower address of a pair connects at once, the higher one after
        `connect_retry_base` unless an SA (the lower one's) is there by then. Where both ends
        use it, that halves the handshakes of a mesh starting at once; where the lower end
        does not, the higher one still connects."""
        for remote in remotes:
            local = self.peers.local_address_for(remote)
            if local is not None and ipaddress.ip_address(local) < ipaddress.ip_address(remote):
                self.initiate(remote)
            else:
                self._schedule_reconnect(remote)

    def _schedule_reconnect(self, remote: str) -> None:
        """`initiate: peers` keeps every pod peer connected: a pod peer that did not answer (or
        stopped answering) is tried again after 5 s, 10 s, 20 s ... up to 5 min, until it answers
        or leaves the map. A whole mesh starting at once can time out both ends of a pair."""
        count, timer = self._connect_retries.get(remote, (0, None))
        if timer is not None or self.loop is None or remote not in self.peers.pod_peers():
            return
        delay = min(self.connect_retry_base * 2 ** count, self.install_retry_max)
        self._connect_retries[remote] = (count + 1, self.loop.call_later(delay, self._reconnect, remote))

    def _reconnect(self, remote: str) -> None:
        count, _ = self._connect_retries.get(remote, (0, None))
        self._connect_retries[remote] = (count, None)
        if remote in self.peers.pod_peers():
            self.initiate(remote)  # reuses an SA the peer set up meanwhile

    def _cancel_reconnect(self, remote: str) -> None:
        _, timer = self._connect_retries.pop(remote, (0, None))
        if timer is not None:
            timer.cancel()

    def _record_failure(self, remote: str, message: str, notify: int | None, *, reason: str | None = None) -> None:
        previous = self.last_failures.pop(remote, None)
        self.last_failures[remote] = {
            "reason": reason or _failure_reason(message, notify),
            "message": message[:MAX_FAILURE_MESSAGE],
            "at": round(time.time(), 1),
            "count": (previous["count"] if previous else 0) + 1,
        }
        while len(self.last_failures) > MAX_FAILURE_RECORDS:
            self.last_failures.popitem(last=False)

    def _remote_of(self, ike_sa: str) -> str | None:
        for sa in self.endpoint.sas.values():
            if sa.label == ike_sa:
                return sa.remote[0]
        return None

    def summarise_logs(self) -> None:
        """One line for the datagrams the IKE core dropped since the last one (it logs none
        of them at info: anyone can send them), and the rate limiter's pending summaries."""
        counters = self.endpoint.counters
        grown = {name: counters[name] - self._drops_logged.get(name, 0) for name in DROP_COUNTERS
                 if counters[name] > self._drops_logged.get(name, 0)}
        if grown:
            log.info("IKE datagrams dropped in the last %.0fs: %s", LOG_WINDOW,
                     ", ".join(f"{name} {n}" for name, n in grown.items()))
            self._drops_logged.update((name, counters[name]) for name in grown)
        flush_rate_limited()

    def _on_summary_timer(self) -> None:
        self.summarise_logs()
        self._summary_timer = self.loop.call_later(LOG_WINDOW, self._on_summary_timer)

    def _arm_timer(self) -> None:
        due = self.endpoint.next_timer()
        if self._timer is not None:
            if due is not None and abs(self._timer.when() - due) < 1e-3:
                return
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self.loop.call_at(max(due, self.loop.time()), self._on_timer)

    # -- peer set changes (mesh mode: new peer maps, renewed certificates) -------------------
    def replace_peers(self, new: PeerSet) -> int:
        """Swap in a new peer set; returns how many IKE SAs it ended.

        IKE SAs with peers the new set no longer allows are deleted (an INFORMATIONAL
        to the peer) and their CHILD_SAs removed at once, not when the peer answers: it
        may be gone. Then the data plane's policies follow, changing only what changed.
        IKE SAs that remain keep their configuration (and the certificate they were
        authenticated with); new ones are set up from the new set.
        """
        old, self.peers = self.peers, new
        self.endpoint.lookup = new.lookup
        ended = 0
        if self.loop is not None:
            now = self.now()
            for sa in list(self.endpoint.sas.values()):
                if sa.state == IkeState.CLOSED or new.still_allows(sa.remote[0], sa.config.name, sa.remote_id):
                    continue
                log.info("peer map: %s (%s) is no longer a peer, deleting IKE SA %s", sa.remote[0],
                         sa.config.name, sa.label)
                for child in list(sa.children.values()):
                    sa.drop_child(child, "deleted")
                self.endpoint.delete_ike(sa.label, now, "peer-removed")
                ended += 1
            self.flush()
        self.dataplane.update_peers(old, new)
        if self.loop is not None and self.config.initiate_peers:
            known, wanted = set(old.pod_peers()), new.pod_peers()
            for remote in [r for r in self._connect_retries if r not in wanted]:
                self._cancel_reconnect(remote)
            self._connect_pod_peers([r for r in wanted if r not in known])
        for remote in [r for r in self.last_failures if new.entry_for(r) is None]:
            del self.last_failures[remote]  # no longer a peer: its failures are no one's business
        for remote in [r for r in self.install_failures if new.entry_for(r) is None]:
            del self.install_failures[remote]
            timer = self._install_retries.pop(remote, None)
            if timer is not None:
                timer.cancel()
        return ended

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = aio.get_running_loop()
        # Policies first: under `require`, nothing leaves in plaintext from here on.
        self.dataplane.start(self.peers)
        # SAs an earlier instance left carry traffic until new ones replace them, whichever
        # side initiates those: the core must know before the first datagram arrives.
        inherited = getattr(self.dataplane, "inherited_peers", lambda: [])()
        kept_until = self.now() + self.config.ike.retransmit().kept_sas_limit()  # the data plane's bound (cli.py)
        for remote in inherited:
            self.endpoint.kernel_sas_kept(remote, kept_until)
        for address in self.peers.local_addresses:
            for port, natt in ((self.config.ike.port, False), (self.config.ike.natt_port, True)):
                await self._open_socket(address, port, natt)
        fd = self.dataplane.fileno()
        if fd is not None:
            self.loop.add_reader(fd, self._on_dataplane_readable)
        self._summary_timer = self.loop.call_later(LOG_WINDOW, self._on_summary_timer)
        self.policies_ready = True
        log.info("sidecar ready: %s, %d peer networks, data plane %s", self.peers.local_id,
                 len(self.peers.entries), self.dataplane.name)
        # Negotiate their replacements now, as no ACQUIRE will ask (the kernel has SAs).
        for remote in inherited:
            self.initiate(remote, replaces_kernel_sas=True)
        if self.config.initiate_peers:
            self._connect_pod_peers([r for r in self.peers.pod_peers() if r not in inherited])
        for remote in self.config.initiate:
            if remote not in inherited:
                self.initiate(remote)

    async def _open_socket(self, address: str, port: int, natt: bool) -> None:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.dataplane.prepare_socket(sock, natt)  # per-socket policy bypass, UDP_ENCAP on 4500
        sock.bind((address, port))
        sock.setblocking(False)
        bound = sock.getsockname()[:2]
        ike_socket = _IkeSocket(self, self.loop, sock, (address, bound[1]), natt)
        ike_socket.start()
        self.sockets[(address, bound[1])] = ike_socket

    async def stop(self, *, hand_over: bool = False) -> None:
        """Tell every peer we are going (INFORMATIONAL delete), then remove our SAs.

        `hand_over` (SIGTERM: a restart or an image upgrade): tell no one and leave every SA
        in the kernel, carrying traffic until the next instance replaces them. A pod that is
        being deleted takes its namespace and SAs with it; its peers drop theirs when the
        peer map no longer lists it (or by DPD)."""
        if self.loop is None:
            return
        # Only a data plane whose SAs outlive us can hand over; without one (`none`), the
        # peers had better hear that we are going.
        hand_over = hand_over and hasattr(self.dataplane, "hand_over")
        if not hand_over:
            self.endpoint.shutdown(self.now())
            self.flush()
            await aio.sleep(0.05)  # let the deletes leave before the sockets close
        reconnects = (timer for _, timer in self._connect_retries.values())
        for timer in (self._timer, self._summary_timer, *self._install_retries.values(), *reconnects):
            if timer is not None:
                timer.cancel()
        self._install_retries.clear()
        self._connect_retries.clear()
        self.summarise_logs()
        fd = self.dataplane.fileno()
        if fd is not None:
            self.loop.remove_reader(fd)
        for sock in self.sockets.values():
            sock.close()
        if hand_over:
            self.dataplane.hand_over()
        else:
            self.dataplane.stop()
        self.policies_ready = False

    async def run_forever(self) -> None:
        await self.start()
        loop = aio.get_running_loop()
        signals = StopSignals(loop, self._stopping)
        await self._stopping.wait()
        await self.stop(hand_over=signals.hand_over)

    def request_stop(self) -> None:
        self._stopping.set()

    # -- status -----------------------------------------------------------------------
    def not_ready_reason(self) -> str | None:
        """None when the pod may receive traffic: started, and the data plane does all the map asks."""
        if not self.ready:
            return "starting"
        return self.dataplane.not_ready_reason()

    def status(self) -> dict:
        reason = self.not_ready_reason()
        return {
            "identity": str(self.peers.local_id),
            "addresses": list(self.peers.local_addresses),
            "ready": reason is None,
            "not_ready_reason": reason,
            "uptime": round(time.time() - self.started_at, 1),
            "peer_map_version": self.peers.peer_map.version,
            "dataplane": self.dataplane.status(),
            "ike_sas": self.ike_status(),
            "install_failures": dict(self.install_failures),
            "counters": dict(self.endpoint.counters),
            # The clock of ike_sas[].established_at (the event loop's), to tell how long ago that was.
            "clock": round(self.now(), 3) if self.loop is not None else None,
            "last_failures": dict(self.last_failures),
        }

    def ike_status(self) -> list[dict]:
        """The IKE core's view, corrected by the kernel's: a refused CHILD_SA is not installed."""
        sas = self.endpoint.status()
        for sa in sas:
            for child in sa["children"]:
                error = self._not_installed.get(int(child["inbound_spi"], 16))
                if error is not None:
                    child["state"], child["kernel_error"] = "not-installed", error
        return sas


class StopSignals:
    """SIGTERM and SIGINT set `stopping`; `hand_over` says whether the SAs stay for the next
    instance (SIGTERM: Kubernetes restarting or upgrading the container) or are removed
    (SIGINT: someone at a terminal)."""

    def __init__(self, loop: aio.EventLoop, stopping: aio.Event):
        self.hand_over = False
        self._stopping = stopping
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):
                pass

    def _on_signal(self, sig: int) -> None:
        self.hand_over = sig == signal.SIGTERM
        self._stopping.set()


def _failure_reason(reason: str, notify: int | None) -> str:
    if notify is not None:
        return notify_name(notify).lower()
    return "timeout" if "no response" in reason else "other"
