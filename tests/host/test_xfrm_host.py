"""The XFRM layer against the host kernel, in namespaces the tests create.

The host kernel has XFRM (policies, larval SAs, ACQUIRE) but no ESP, so SA
installation is only checked to fail cleanly here; tests/vm covers it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time

import pytest

from ipsec_mesh.xfrm import (
    Acquire,
    Action,
    Aead,
    Direction,
    Group,
    Level,
    Lifetime,
    Mark,
    PolExpire,
    PolicySpec,
    SaSpec,
    Selector,
    Template,
    Xfrm,
    XfrmError,
    neighbor_discovery_bypass,
    owned_reqid,
    peer_priority,
)
from ipsec_mesh_operator.netns import ip, socket_in
from tests.support.netns import A4, A6, B4, B6, make_pair, missing_prerequisite

pytestmark = pytest.mark.skipif(missing_prerequisite() is not None, reason=str(missing_prerequisite()))

REQID = owned_reqid(42)
DEADLINE = 5.0  # seconds to wait for any kernel event


@pytest.fixture
def pair():
    namespaces = make_pair("xfh")
    yield namespaces
    namespaces.close()


@pytest.fixture
def xfrm(pair):
    with Xfrm(pair.a) as handle:
        yield handle


def host(a: str, b: str, **kwargs) -> Selector:
    return Selector.host_pair(a, b, **kwargs)


def wait_for(handle: Xfrm, kind: type, predicate=lambda event: True, deadline: float = DEADLINE):
    """The first matching event within `deadline` seconds (later ones stay queued)."""
    end = time.monotonic() + deadline
    for event in handle.iter_events(timeout=deadline):
        if isinstance(event, kind) and predicate(event):
            return event
        if time.monotonic() > end:
            break
    pytest.fail(f"no {kind.__name__} event within {deadline} s")


def send_without_sa(netns: str, dst: str) -> None:
    """One UDP datagram to port 9 that a required template holds back (no SA yet)."""
    sender = socket_in(netns, socket.AF_INET)
    sender.setblocking(False)
    try:
        sender.sendto(b"x", (dst, 9))
    except OSError:
        pass  # EAGAIN while the kernel waits for an SA is fine: the ACQUIRE is what counts
    finally:
        sender.close()


def exchange(sender: socket.socket, receiver: socket.socket, address, attempts: int = 8,
             payload: bytes = b"prefer") -> bytes | None:
    """Send until the receiver gets one datagram (a fresh veth may still be resolving neighbours)."""
    for _ in range(attempts):
        sender.sendto(payload, address)
        try:
            return receiver.recvfrom(64)[0]
        except TimeoutError:
            continue
    return None


def test_policy_lifecycle_ipv4_ipv6(xfrm, pair):
    out4 = PolicySpec(host(A4, B4), Direction.OUT, priority=100, templates=(Template(REQID),))
    in6 = PolicySpec(Selector(f"{B6}/128", "fd99::/64", proto=17, dport=53), Direction.IN,
                     action=Action.BLOCK, priority=50, mark=Mark(7, 0xFF))
    use6 = PolicySpec(host(A6, B6), Direction.OUT, templates=(Template(REQID, level=Level.USE),))
    for policy in (out4, in6, use6):
        xfrm.add_policy(policy)

    dumped = {(p.selector, p.direction): p for p in xfrm.dump_policies()}
    assert set(dumped) == {(out4.selector, Direction.OUT), (in6.selector, Direction.IN), (use6.selector, Direction.OUT)}
    assert all(p.owned for p in dumped.values())
    assert dumped[(out4.selector, Direction.OUT)].templates == (Template(REQID),)
    assert dumped[(in6.selector, Direction.IN)].action == Action.BLOCK
    assert dumped[(in6.selector, Direction.IN)].mark == Mark(7, 0xFF)
    assert dumped[(use6.selector, Direction.OUT)].templates[0].level == Level.USE
    shown = ip("xfrm", "policy", "show", netns=pair.a)
    assert "level use" in shown and "action block" in shown and f"reqid {REQID}" in shown

    with pytest.raises(XfrmError) as exists:
        xfrm.add_policy(out4)
    assert exists.value.errno == errno.EEXIST and exists.value.operation == "add_policy"

    xfrm.update_policy(PolicySpec(out4.selector, Direction.OUT, priority=7, templates=(Template(REQID),)))
    assert xfrm.get_policy(out4.selector, Direction.OUT).priority == 7
    assert xfrm.get_policy(in6.selector, Direction.IN) is None  # marked: needs its mark
    assert xfrm.get_policy(in6.selector, Direction.IN, Mark(7, 0xFF)).priority == 50

    assert xfrm.delete_policy(out4.selector, Direction.OUT)
    assert xfrm.delete_policy(in6.selector, Direction.IN, Mark(7, 0xFF))
    assert xfrm.delete_policy(use6.selector, Direction.OUT)
    assert not xfrm.delete_policy(use6.selector, Direction.OUT)
    assert xfrm.dump_policies() == []


def test_batched_add_and_update_report_per_policy_results(xfrm):
    specs = [PolicySpec(host(A4, f"10.98.{n // 250}.{n % 250 + 1}"), Direction.OUT, templates=(Template(REQID),))
             for n in range(300)]
    assert xfrm.add_policies(specs) == [None] * 300
    again = xfrm.add_policies(specs[:2] + [PolicySpec(host(A4, "10.97.0.1"), Direction.OUT)])
    assert [error.errno if error else None for error in again] == [errno.EEXIST, errno.EEXIST, None]
    assert xfrm.update_policies(specs) == [None] * 300
    assert len(xfrm.dump_policies()) == 301


def many_peer_policies(count: int) -> list[PolicySpec]:
    return [PolicySpec(host(A4, f"10.{96 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}"), Direction.OUT,
                       priority=2000, templates=(Template(REQID),)) for n in range(count)]


def test_kernel_errors_across_many_datagrams_land_on_their_own_policies(xfrm):
    """Positive acks are only asked for once per datagram: failures must still be reported
    per policy, wherever they fall (first, middle, last of a datagram, last of the batch)."""
    specs = many_peer_policies(3000)  # about 250 bytes each: a dozen datagrams
    present = set(range(0, 3000, 97)) | {1, 258, 259, 2999}
    assert xfrm.add_policies([specs[n] for n in sorted(present)]) == [None] * len(present)
    results = xfrm.add_policies(specs)
    assert {n for n, error in enumerate(results) if error is not None} == present
    assert all(results[n].errno == errno.EEXIST for n in present)
    assert len(xfrm.dump_policies()) == 3000

    gone = sorted(set(range(5, 3000, 113)) | {2999})
    assert xfrm.delete_policies([(specs[n].selector, Direction.OUT, None) for n in gone]) == [None] * len(gone)
    results = xfrm.delete_policies([(spec.selector, Direction.OUT, None) for spec in specs])
    assert [n for n, error in enumerate(results) if error is not None] == gone
    assert {results[n].errno for n in gone} <= {errno.ENOENT, errno.ESRCH}
    assert xfrm.dump_policies() == []


def test_acks_the_kernel_could_not_queue_are_an_error_not_a_success(xfrm):
    specs = many_peer_policies(400)
    assert xfrm.add_policies(specs) == [None] * 400
    xfrm._requests.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # room for a few acks
    with pytest.raises(XfrmError) as lost:
        xfrm.add_policies(specs)  # 400 error acks in one datagram's worth of requests
    assert lost.value.errno in (errno.ENOBUFS, errno.ETIMEDOUT)


def test_policy_programming_keeps_pace_with_ip_batch():
    """Issue 14: installing, updating and deleting peer policies costs at most 1.5x what
    `ip -batch` needs for the same policies, measured side by side (it was 4.8x)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "bench_xfrm_policies.py"
    sys.path.insert(0, str(path.parent))  # as when run as a script: bench/ helpers import by name
    spec = importlib.util.spec_from_file_location("bench_xfrm_policies", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ratios = {step: ours / ip_batch for step, (ours, ip_batch) in bench.side_by_side(2000, rounds=5).items()}
    assert set(ratios) == {"install", "update", "delete"}
    assert all(ratio <= 1.5 for ratio in ratios.values()), ratios


def test_per_socket_bypass_passes_ike_while_block_policy_drops(xfrm, pair):
    udp = dict(proto=socket.IPPROTO_UDP)
    everything = Selector("0.0.0.0/0", "0.0.0.0/0", **udp)
    xfrm.add_policy(PolicySpec(everything, Direction.OUT, action=Action.BLOCK))
    xfrm.add_policy(PolicySpec(everything, Direction.IN, action=Action.BLOCK))
    receiver_b = socket_in(pair.b, socket.AF_INET)
    receiver_b.bind((B4, 5500))
    receiver_b.settimeout(1.0)
    plain = socket_in(pair.a, socket.AF_INET)
    ike = socket_in(pair.a, socket.AF_INET)
    ike.bind((A4, 500))
    ike.settimeout(1.0)
    xfrm.socket_bypass(ike)
    sockets = [receiver_b, plain, ike]
    try:
        with pytest.raises(OSError) as blocked:
            plain.sendto(b"plain", (B4, 5500))
        assert blocked.value.errno == errno.EPERM  # XFRM_POLICY_BLOCK on output
        ike.sendto(b"ike", (B4, 5500))
        assert receiver_b.recvfrom(64) == (b"ike", (A4, 500))
        receiver_b.sendto(b"reply", (A4, 500))  # inbound block policy, bypassed socket
        assert ike.recvfrom(64) == (b"reply", (B4, 5500))
    finally:
        for sock in sockets:
            sock.close()


def test_inbound_block_drops_for_sockets_without_bypass(xfrm, pair):
    xfrm.add_policy(PolicySpec(Selector("0.0.0.0/0", "0.0.0.0/0", proto=17), Direction.IN, action=Action.BLOCK))
    sender_b = socket_in(pair.b, socket.AF_INET)
    receiver_a = socket_in(pair.a, socket.AF_INET)
    receiver_a.bind((A4, 5600))
    receiver_a.settimeout(0.5)
    try:
        sender_b.sendto(b"dropped", (A4, 5600))
        with pytest.raises(TimeoutError):
            receiver_a.recvfrom(64)
    finally:
        sender_b.close()
        receiver_a.close()


def test_bypass_ipv6_and_udp_encap_sockets(xfrm, pair):
    xfrm.add_policy(PolicySpec(Selector("::/0", "::/0", proto=17), Direction.OUT, action=Action.BLOCK))
    receiver_b = socket_in(pair.b, socket.AF_INET6)
    receiver_b.bind((B6, 4500))
    receiver_b.settimeout(1.0)
    natt = socket_in(pair.a, socket.AF_INET6)
    natt.bind((A6, 4500))
    try:
        xfrm.socket_bypass(natt)
        xfrm.set_udp_encap(natt)
        # IPv6 neighbour discovery on a fresh veth can eat the first datagram.
        assert exchange(natt, receiver_b, (B6, 4500), payload=b"\0\0\0\0ike") == b"\0\0\0\0ike"
        with pytest.raises(XfrmError):
            xfrm.set_udp_encap(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    finally:
        receiver_b.close()
        natt.close()


def test_acquire_on_template_without_sa(xfrm, pair):
    xfrm.subscribe([Group.ACQUIRE])
    xfrm.add_policy(PolicySpec(host(A4, B4), Direction.OUT, templates=(Template(REQID),)))
    send_without_sa(pair.a, B4)
    event = wait_for(xfrm, Acquire)
    assert event.owned and event.template == Template(REQID)
    assert (str(event.src), str(event.dst), event.proto) == (A4, B4, 50)
    assert event.selector.dport == 9 and event.policy.direction == Direction.OUT


def test_level_use_sends_plaintext_and_still_acquires(xfrm, pair):
    xfrm.subscribe()
    xfrm.add_policy(PolicySpec(host(A6, B6), Direction.OUT, templates=(Template(REQID, level=Level.USE),)))
    receiver_b = socket_in(pair.b, socket.AF_INET6)
    receiver_b.bind((B6, 7000))
    receiver_b.settimeout(0.5)
    sender = socket_in(pair.a, socket.AF_INET6)
    try:
        assert exchange(sender, receiver_b, (B6, 7000)) == b"prefer"  # plaintext, no SA
    finally:
        receiver_b.close()
        sender.close()
    event = wait_for(xfrm, Acquire, lambda e: str(e.dst) == B6)
    assert event.template.level == Level.USE


async def test_events_through_asyncio_reader(xfrm, pair):
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    xfrm.subscribe()
    loop.add_reader(xfrm.fileno(), lambda: [queue.put_nowait(e) for e in xfrm.read_events()])
    try:
        xfrm.add_policy(PolicySpec(host(A4, B4, proto=17), Direction.OUT, templates=(Template(REQID),)))
        await asyncio.to_thread(send_without_sa, pair.a, B4)
        event = await asyncio.wait_for(queue.get(), DEADLINE)
        assert isinstance(event, Acquire) and event.owned
        with Xfrm(pair.a) as inside_the_loop:  # pyroute2's sync NetlinkSocket cannot do this
            assert len(inside_the_loop.dump_policies()) == 1
    finally:
        loop.remove_reader(xfrm.fileno())


def test_policy_expire_events(xfrm):
    xfrm.subscribe([Group.EXPIRE])
    lifetime = Lifetime(soft_add_seconds=1, hard_add_seconds=2)
    xfrm.add_policy(PolicySpec(host(A4, "10.99.0.77"), Direction.OUT, action=Action.BLOCK, lifetime=lifetime))
    # The kernel's policy timer runs in softirq context: on a machine busy with VMs and other
    # suites it was seen to miss 5 s. A bound on waiting, not a timing claim.
    soft = wait_for(xfrm, PolExpire, lambda e: not e.hard, deadline=30)
    hard = wait_for(xfrm, PolExpire, lambda e: e.hard, deadline=30)
    assert soft.owned and hard.owned and str(hard.policy.selector.dst.network_address) == "10.99.0.77"
    assert xfrm.dump_policies() == []


def test_alloc_spi_makes_an_owned_larval_sa(xfrm):
    spi = xfrm.alloc_spi(B4, A4)
    assert 0x100 <= spi <= 0xFFFFFFFF
    exact = xfrm.alloc_spi(B6, A6, min=0x4242, max=0x4242)
    assert exact == 0x4242
    larval = xfrm.get_sa(A4, spi)
    assert larval is not None and larval.larval and larval.owned and str(larval.src) == B4
    assert {sa.spi for sa in xfrm.dump_sas()} == {spi, 0x4242}
    assert xfrm.delete_sa(A4, spi)
    assert xfrm.get_sa(A4, spi) is None
    assert not xfrm.delete_sa(A4, spi)


def test_flush_owned_spares_foreign_state(xfrm, pair):
    ip("xfrm", "policy", "add", "src", A4, "dst", "10.99.0.50", "dir", "out", "action", "block", netns=pair.a)
    ip("xfrm", "policy", "add", "src", A4, "dst", B4, "dir", "out", "tmpl", "proto", "esp", "reqid", "5",
       "mode", "transport", netns=pair.a)
    foreign_spi = int(ip("xfrm", "state", "allocspi", "src", B4, "dst", A4, "proto", "esp", "reqid", "5",
                         netns=pair.a).split("spi ")[1].split()[0], 16)
    ours = PolicySpec(host(A4, B4), Direction.IN, templates=(Template(REQID),))
    xfrm.add_policy(ours)  # same addresses as the foreign one, other direction
    xfrm.add_policy(PolicySpec(host(A4, B4), Direction.OUT, priority=5, templates=(Template(REQID),)))
    xfrm.alloc_spi(B4, A4)

    with pytest.raises(XfrmError) as refused:
        xfrm.delete_sa(A4, foreign_spi)
    assert refused.value.errno == errno.EPERM

    result = xfrm.flush_owned()
    assert (result.policies, result.sas) == (2, 1)
    survivors = xfrm.dump_policies()
    assert len(survivors) == 2 and not any(p.owned for p in survivors)
    assert [sa.spi for sa in xfrm.dump_sas()] == [foreign_spi]
    assert "10.99.0.50" in ip("xfrm", "policy", "show", netns=pair.a)


def test_esp_sa_install_fails_cleanly_without_esp(xfrm):
    spec = SaSpec(A4, B4, 0x1001, REQID, Aead("rfc4106(gcm(aes))", bytes(20)))
    try:
        xfrm.add_sa(spec)
    except XfrmError as error:
        assert error.operation == "add_sa"
        assert error.errno in (errno.EPROTONOSUPPORT, errno.ENOSYS, errno.ENOENT)
        assert "ESP" in str(error) and error.detail  # the kernel's reason plus our hint
        assert bytes(20).hex() not in str(error)
        return
    xfrm.flush_owned()
    pytest.skip("this kernel has ESP: SA installation is covered by tests/vm")


def test_foreign_reqid_is_refused_before_the_kernel(xfrm):
    with pytest.raises(XfrmError):
        xfrm.add_policy(PolicySpec(host(A4, B4), Direction.OUT, templates=(Template(5),)))
    with pytest.raises(XfrmError):
        xfrm.add_sa(SaSpec(A4, B4, 0x1001, 5, Aead("rfc4106(gcm(aes))", bytes(20))))
    assert xfrm.dump_policies() == []


def test_namespace_selection_by_name_path_and_fd(pair):
    with Xfrm(pair.a) as in_a:
        in_a.add_policy(PolicySpec(host(A4, B4), Direction.OUT, action=Action.BLOCK))
    with Xfrm(f"/run/netns/{pair.a}") as by_path, Xfrm(pair.b) as in_b:
        assert len(by_path.dump_policies()) == 1
        assert in_b.dump_policies() == []
    descriptor = os.open(f"/run/netns/{pair.a}", os.O_RDONLY)
    try:
        with Xfrm(descriptor) as by_fd:
            assert len(by_fd.dump_policies()) == 1
    finally:
        os.close(descriptor)
    missing = f"{pair.a}-missing"
    with pytest.raises(XfrmError) as no_such:
        Xfrm(missing)
    assert no_such.value.errno == errno.ENOENT and not os.path.exists(f"/run/netns/{missing}")


def test_ipv6_neighbour_discovery_needs_the_bypass_policies(xfrm, pair):
    template = (Template(REQID),)
    for selector, direction in ((host(A6, B6), Direction.OUT), (host(B6, A6), Direction.IN)):
        xfrm.add_policy(PolicySpec(selector, direction, priority=peer_priority(selector), templates=template))
    receiver_b = socket_in(pair.b, socket.AF_INET6)
    receiver_b.bind((B6, 500))
    receiver_b.settimeout(0.4)
    ike = socket_in(pair.a, socket.AF_INET6)
    ike.bind((A6, 500))
    xfrm.socket_bypass(ike)
    try:
        # b's neighbour advertisement arrives in clear and the inbound policy drops it
        assert exchange(ike, receiver_b, (B6, 500), attempts=3) is None
        assert xfrm.add_policies(neighbor_discovery_bypass()) == [None] * 4
        assert exchange(ike, receiver_b, (B6, 500)) == b"prefer"
    finally:
        receiver_b.close()
        ike.close()
