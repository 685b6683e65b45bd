"""XfrmDataPlane at a restart (issue 14): SAs without IKE state keep carrying traffic
until a new CHILD_SA with their peer sends, then go (outbound at once, inbound after the
grace), or go after a bounded time. Against a recording stand-in for the kernel."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from types import SimpleNamespace

from ipsec_mesh.agent import xfrm_dataplane
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from ipsec_mesh.ike import ChildSaDeleted, ChildSaOutboundRetired
from ipsec_mesh.xfrm import LifetimeCurrent, owned_reqid
from tests.agent.test_xfrm_dataplane_events import LOCAL, PEER, RecordingXfrm, child

OTHER = "192.0.2.99"


class KernelWithSas(RecordingXfrm):
    def __init__(self, sas):
        super().__init__()
        self.sas = sas

    def dump_sas(self):
        return self.sas

    def dump_policies(self):
        return []

    def get_sa(self, dst, spi, proto):
        return None  # no counters to read: a kept inbound SA goes after the grace

    def add_policies(self, specs):
        return [None] * len(specs)

    update_policies = delete_policies = add_policies


class NoServices:
    def apply(self, services):
        return True

    def close(self):
        pass

    def status(self):
        return {}


def sa(src, dst, spi, *, owned=True, larval=False):
    ip = ipaddress.ip_address
    return SimpleNamespace(src=ip(src), dst=ip(dst), spi=spi, proto=50, owned=owned, larval=larval,
                           reqid=owned_reqid(1) if owned else 7)


def start(monkeypatch, sas, kernel_class=KernelWithSas, **kwargs) -> tuple[XfrmDataPlane, KernelWithSas]:
    monkeypatch.setattr(xfrm_dataplane, "Xfrm", lambda netns: SimpleNamespace(subscribe=lambda: None,
                                                                             close=lambda: None))
    kernel = kernel_class(sas)
    plane = XfrmDataPlane(xfrm=kernel, services=NoServices(), **kwargs)
    peers = SimpleNamespace(local_addresses=(LOCAL,), entries=(), peer_map=SimpleNamespace(services=()),
                            entry_for=lambda remote: None)
    plane.start(peers)
    return plane, kernel


def deleted(kernel) -> list[int]:
    return [spi for call, spi in kernel.calls if call == "delete_sa"]


async def test_sas_of_an_earlier_instance_stay_until_the_new_child_sends(monkeypatch):
    left = [sa(PEER, LOCAL, 0xA1), sa(LOCAL, PEER, 0xB1), sa(OTHER, LOCAL, 0xA2), sa(LOCAL, OTHER, 0xB2),
            sa(PEER, LOCAL, 0xF0, owned=False), sa(PEER, LOCAL, 0xF1, larval=True)]
    plane, kernel = start(monkeypatch, left, rekey_grace=0.05)
    assert deleted(kernel) == [] and sorted(plane.inherited_peers()) == sorted([PEER, OTHER])
    assert plane.status()["kept_sas"] == {PEER: 2, OTHER: 2}  # the status shows them
    info = child()
    plane.install_inbound(info)
    assert deleted(kernel) == []  # the peer cannot send on the new SA yet: the old ones carry on
    plane.install_outbound(info)
    # We send on the new one now (the kernel picks the newest SA); the old outbound half goes
    # after the grace, so that a send that looked it up just before does not meet it deleted.
    assert deleted(kernel) == []
    await asyncio.sleep(0.1)
    assert sorted(deleted(kernel)) == [0xA1, 0xB1]  # and the inbound half after the grace; OTHER's untouched
    assert plane.inherited_peers() == [OTHER]
    plane.stop()
    assert {0xA2, 0xB2} <= set(deleted(kernel)[2:])  # a full stop (SIGINT) removes them too


async def test_sas_never_replaced_go_after_the_handover_limit(monkeypatch):
    monkeypatch.setattr(xfrm_dataplane, "HANDOVER_LIMIT", 0.05)
    plane, kernel = start(monkeypatch, [sa(PEER, LOCAL, 0xA1), sa(LOCAL, PEER, 0xB1)])
    await asyncio.sleep(0.1)
    assert sorted(deleted(kernel)) == [0xA1, 0xB1] and plane.inherited_peers() == []
    plane.stop()


async def test_a_restarted_peers_replaced_child_stays_until_ours_sends(monkeypatch):
    plane, kernel = start(monkeypatch, [], rekey_grace=0.05)
    old = child()
    plane.install_inbound(old)
    plane.install_outbound(old)
    plane.remove(ChildSaDeleted("x", "mesh", old.inbound_spi, old.outbound_spi, LOCAL, PEER, "replaced"))
    assert deleted(kernel) == [] and plane.inbound == {} and plane.outbound == {}
    new = dataclasses.replace(child(), inbound_spi=0xC0000011, outbound_spi=0xD0000012)
    plane.install_inbound(new)
    plane.install_outbound(new)
    assert deleted(kernel) == []
    await asyncio.sleep(0.1)
    assert sorted(deleted(kernel)) == sorted([old.outbound_spi, old.inbound_spi])
    plane.stop()


class KernelCounting(KernelWithSas):
    """SAs whose packet counters a test moves, read back by XFRM_MSG_GETSA."""

    def __init__(self, sas):
        super().__init__(sas)
        self.packets = {s.spi: 0 for s in sas}

    def get_sa(self, dst, spi, proto):
        if spi not in self.packets or spi in deleted(self):
            return None
        return SimpleNamespace(current=LifetimeCurrent(packets=self.packets[spi]))


async def test_a_kept_inbound_sa_stays_while_the_peer_still_sends_on_it(monkeypatch):
    """The peer switches to the new CHILD_SA only when our confirmation reaches it (a lost
    one is retransmitted after 4 s; a peer slowed down takes longer): until then it sends
    on the old SAs, and what its kernel sends there must still be received here. So the
    kept inbound half goes once the kernel shows it quiet for a grace period, not on a timer."""
    plane, kernel = start(monkeypatch, [sa(PEER, LOCAL, 0xA1), sa(LOCAL, PEER, 0xB1)], KernelCounting,
                          rekey_grace=0.05)
    info = child()
    plane.install_inbound(info)
    plane.install_outbound(info)
    assert deleted(kernel) == []
    for _ in range(6):  # the peer has not switched yet: its packets keep arriving on the old SA
        kernel.packets[0xA1] += 10
        await asyncio.sleep(0.03)
    assert deleted(kernel) == [0xB1], "the old inbound SA went while the peer still sent on it"
    assert plane.status()["kept_sas"] == {PEER: 1}  # still in the kernel, and the status says so
    await asyncio.sleep(0.2)  # the peer switched: nothing more on the old SA
    assert deleted(kernel) == [0xB1, 0xA1] and plane.status()["kept_sas"] == {}
    plane.stop()


async def test_a_kept_inbound_sa_that_never_goes_quiet_goes_at_the_handover_limit(monkeypatch):
    monkeypatch.setattr(xfrm_dataplane, "HANDOVER_LIMIT", 0.2)
    plane, kernel = start(monkeypatch, [sa(PEER, LOCAL, 0xA1), sa(LOCAL, PEER, 0xB1)], KernelCounting,
                          rekey_grace=0.05)
    info = child()
    plane.install_inbound(info)
    plane.install_outbound(info)
    for _ in range(20):
        kernel.packets[0xA1] += 1
        await asyncio.sleep(0.02)
    assert deleted(kernel) == [0xB1, 0xA1]
    plane.stop()


async def test_a_full_stop_removes_a_kept_inbound_sa_still_waiting_for_quiet(monkeypatch):
    plane, kernel = start(monkeypatch, [sa(PEER, LOCAL, 0xA1), sa(LOCAL, PEER, 0xB1)], KernelCounting,
                          rekey_grace=0.05)
    info = child()
    plane.install_inbound(info)
    plane.install_outbound(info)
    kernel.packets[0xA1] += 1
    plane.stop()  # SIGINT: our SAs go, the kept one included
    assert 0xA1 in deleted(kernel)
    await asyncio.sleep(0.1)  # and no check runs on the closed data plane afterwards
    assert deleted(kernel).count(0xA1) == 1


def test_kept_sas_outlast_the_longest_the_ike_side_takes_to_replace_them(monkeypatch):
    """Bounds that agree (issue 14): the restarted side's IKE_SA_INIT and IKE_AUTH may each take
    the whole retransmission budget, and the peer's new CHILD_SA waits up to one budget for the
    restarted side's confirmation (`IkeSa.inbound_only_limit`) before it sends. SAs removed
    sooner leave the traffic with no SA in between (before: a fixed 60 s, while the defaults'
    budget is 82.5 s)."""
    from ipsec_mesh.agent.cli import make_dataplane
    from ipsec_mesh.agent.config import IkeSettings
    from ipsec_mesh.agent.xfrm_dataplane import handover_limit

    for ike in (IkeSettings(), IkeSettings(retransmit_timeout=1, retransmit_tries=0),
                IkeSettings(retransmit_timeout=60, retransmit_tries=10)):
        budget = sum(ike.retransmit().delays())
        assert handover_limit(ike.retransmit()) > 2 * budget
    default = IkeSettings()
    assert XfrmDataPlane(xfrm=KernelWithSas([]), services=NoServices()).handover_limit > \
        2 * sum(default.retransmit().delays())
    # The sidecar's data plane gets the bound of its own settings.
    monkeypatch.setattr(xfrm_dataplane, "Xfrm", lambda netns: KernelWithSas([]))
    monkeypatch.setattr(xfrm_dataplane, "OnDemandTranslation", lambda netns: NoServices())
    slow = IkeSettings(retransmit_timeout=30, retransmit_tries=6)
    assert make_dataplane("xfrm", "ns", slow).handover_limit == handover_limit(slow.retransmit())


def retired(info) -> ChildSaOutboundRetired:
    return ChildSaOutboundRetired("x", info.name, info.inbound_spi, info.outbound_spi, info.local_addr, info.remote_addr)


async def test_a_retired_outbound_sa_goes_after_the_grace_when_a_newer_one_sends(monkeypatch):
    """The kernel sends on the newest SA to a peer: a retired older one (a rekey's, a duplicate
    IKE SA's) is no longer picked, but a send that looked it up just before would fail with
    EINVAL if it met it deleted. The newest one retired goes at once: the kernel would keep
    sending on it after the peer removed its inbound half."""
    plane, kernel = start(monkeypatch, [], rekey_grace=0.05)
    old, new = child(), dataclasses.replace(child(), inbound_spi=0xC0000011, outbound_spi=0xD0000012)
    for info in (old, new):
        plane.install_inbound(info)
        plane.install_outbound(info)
    plane.retire_outbound(retired(old))
    assert deleted(kernel) == [] and list(plane.outbound) == [new.outbound_spi]
    await asyncio.sleep(0.1)
    assert deleted(kernel) == [old.outbound_spi]
    plane.retire_outbound(retired(new))  # the newest (and only) one
    assert deleted(kernel) == [old.outbound_spi, new.outbound_spi]
    plane.stop()


async def test_only_a_newer_outbound_sa_to_the_same_peer_delays_a_retired_one(monkeypatch):
    """The kernel picks the newest SA per peer: one installed earlier, or one to another peer,
    sends nothing of the retired SA's traffic, so that one goes at once."""
    plane, kernel = start(monkeypatch, [], rekey_grace=0.05)
    older = dataclasses.replace(child(), inbound_spi=0xC0000021, outbound_spi=0xD0000022)
    retiring = child()
    elsewhere = dataclasses.replace(child(), inbound_spi=0xC0000031, outbound_spi=0xD0000032, remote_addr=OTHER)
    for info in (older, retiring, elsewhere):
        plane.install_inbound(info)
        plane.install_outbound(info)
    plane.retire_outbound(retired(retiring))
    assert deleted(kernel) == [retiring.outbound_spi]
    plane.retire_outbound(retired(older))  # a newer one to PEER was installed after it, then retired
    assert deleted(kernel) == [retiring.outbound_spi, older.outbound_spi]
    assert list(plane.outbound) == [elsewhere.outbound_spi]
    plane.stop()


async def test_an_unused_outbound_sa_waiting_for_its_grace_goes_at_a_full_stop_and_stays_at_a_hand_over(monkeypatch):
    for hand_over in (False, True):
        plane, kernel = start(monkeypatch, [sa(PEER, LOCAL, 0xA1), sa(LOCAL, PEER, 0xB1)], rekey_grace=0.05)
        info = child()
        plane.install_inbound(info)
        plane.install_outbound(info)
        plane.hand_over() if hand_over else plane.stop()
        await asyncio.sleep(0.1)  # no timer runs on the closed data plane
        assert (0xB1 in deleted(kernel)) is not hand_over and deleted(kernel).count(0xB1) <= 1


async def test_an_inbound_sa_in_its_grace_goes_at_a_full_stop_and_its_timer_never_fires_after(monkeypatch):
    """A CHILD_SA the peer deleted keeps its inbound half for the grace (in-flight ESP). A
    full stop within that grace removed every SA it held but not that one (left in the
    kernel), and the grace's timer then deleted it through the closed channel."""
    plane, kernel = start(monkeypatch, [], rekey_grace=0.05)
    info = child()
    plane.install_inbound(info)
    plane.install_outbound(info)
    plane.remove(ChildSaDeleted("x", "mesh", info.inbound_spi, info.outbound_spi, LOCAL, PEER, "deleted"))
    assert deleted(kernel) == [info.outbound_spi]  # the inbound half waits for the grace
    plane.stop()
    assert sorted(deleted(kernel)) == sorted([info.outbound_spi, info.inbound_spi])
    calls = len(kernel.calls)
    await asyncio.sleep(0.1)
    assert len(kernel.calls) == calls  # nothing after the stop
