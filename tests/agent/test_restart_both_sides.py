"""Both sidecars of a pair restart (issue 14; the VM's both-sides test below the VM): each
new instance finds the SAs its earlier one left and initiates their replacement, so two IKE
SAs cross and the duplicate-SA rule keeps one. Two real agents over loopback UDP, each with
the real XfrmDataPlane against a model of its kernel (tests.agent.test_restart_responder);
every packet either side's traffic sends must arrive, and a packet the sender has no SA for
counts as lost (under `require` the kernel drops it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ipsec_mesh import aio
from ipsec_mesh.agent import runtime, xfrm_dataplane
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from tests.agent.test_restart_responder import KernelModel, agent
from tests.agent.test_xfrm_handover import NoServices
from tests.support.loopback import wait_for
from tests.support.loops import on  # noqa: F401 (fixture)

LEFT, RIGHT = "127.0.0.3", "127.0.0.4"


async def traffic(kernels: dict[str, KernelModel], lost: dict[str, list[int | None]], stop: aio.Event):
    """One packet each way every 10 ms on the SA each kernel picks (the newest to the peer);
    lost: the receiver has no SA with its SPI, or the sender has none to send on."""
    while not stop.is_set():
        for name, other in (("left", "right"), ("right", "left")):
            sender, receiver = kernels[name], kernels[other]
            spi = sender.sending()
            if spi is not None and spi in receiver.sas:
                receiver.packets[spi] += 1
            else:
                lost[f"{name}->{other}"].append(spi)
        await aio.sleep(0.01)


def installed(a) -> list[str]:
    return [c.state.value for sa in a.endpoint.sas.values() if sa.is_established for c in sa.children.values()]


# (left_after, latency): the right's first IKE_SA_INIT lost; the two IKE SAs crossing, each
# IKE datagram 50 ms late (before: 4-5 packets lost each way at the switch, the left's IKE SA
# deleted before the right had installed the winner); the left up after the right's retransmission.
@pytest.mark.parametrize(("left_after", "latency"), [(0.3, 0.0), (0.1, 0.05), (1.0, 0.3)])
def test_both_sides_restart_and_lose_nothing(monkeypatch, on, left_after, latency):
    on(both_sides_restart(monkeypatch, left_after, latency))


async def both_sides_restart(monkeypatch, left_after: float, latency: float) -> None:
    """The right restarts first and initiates while the left is still down (its IKE_SA_INIT
    retransmitted every second), the left comes up `left_after` s later and initiates too."""
    monkeypatch.setattr(xfrm_dataplane, "Xfrm", lambda netns: SimpleNamespace(subscribe=lambda: None,
                                                                             close=lambda: None,
                                                                             fileno=lambda: None))
    kernels = {"left": KernelModel(RIGHT), "right": KernelModel(LEFT)}

    def plane(name: str) -> XfrmDataPlane:
        return XfrmDataPlane(f"restart-both-{name}", xfrm=kernels[name], services=NoServices(), rekey_grace=0.1)

    if latency:
        # Each IKE datagram takes `latency` s (a loaded or emulated machine's processing time).
        sendto = runtime._IkeSocket.sendto
        monkeypatch.setattr(runtime._IkeSocket, "sendto", lambda sock, data, remote: aio.get_running_loop().call_later(
            latency, sendto, sock, data, remote))
    left = agent(LEFT, RIGHT, plane("left"), [RIGHT])
    right = agent(RIGHT, LEFT, plane("right"), [])
    await right.start()
    await left.start()
    await wait_for(lambda: all(len(k.sas) == 2 for k in kernels.values()), timeout=10, what="the first SAs")
    lost: dict[str, list[int | None]] = {"left->right": [], "right->left": []}
    stop = aio.Event()
    flow = aio.create_task(traffic(kernels, lost, stop))
    await aio.sleep(0.1)
    # The left is killed (-9), the right stopped with SIGTERM: their SAs stay in both kernels.
    await left.stop(hand_over=True)
    await right.stop(hand_over=True)
    for kernel in kernels.values():
        kernel.restart()
    right = agent(RIGHT, LEFT, plane("right"), [])
    left = agent(LEFT, RIGHT, plane("left"), [])
    await right.start()
    await aio.sleep(left_after)
    await left.start()
    try:
        # One IKE SA on each side (none still connecting: the right's may be retransmitting
        # its IKE_SA_INIT), its CHILD_SA installed, two SAs in each kernel, none kept.
        await wait_for(lambda: all(not k.kept & set(k.sas) and len(k.sas) == 2 for k in kernels.values())
                       and all(len(a.endpoint.sas) == 1 and installed(a) == ["installed"] for a in (left, right)),
                       timeout=20, what="the kept SAs replaced on both sides")
        await aio.sleep(1)  # traffic on the new SAs only (the VM test: 3 s)
        after = {name: len(k.sas) for name, k in kernels.items()}, [installed(a) for a in (left, right)]
    finally:
        stop.set()
        await flow
        await left.stop()
        await right.stop()
    assert {k: len(v) for k, v in lost.items()} == {"left->right": 0, "right->left": 0}, lost
    assert after == ({"left": 2, "right": 2}, [["installed"], ["installed"]])
