"""A restarted sidecar whose PEER initiates the replacement IKE SA (issue 14): as responder it
keeps sending on the SA its earlier instance left until the peer shows it installed the new
CHILD_SA (ESP on the new inbound SA). Two real agents over loopback UDP; the restarted one
runs the real XfrmDataPlane against a model of the kernel that keeps SAs, counts packets per
SA and sends on the newest outbound SA (as the kernel picks among SAs of one template)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from pathlib import Path
from types import SimpleNamespace

from ipsec_mesh.agent import runtime, xfrm_dataplane
from ipsec_mesh.agent.config import parse_agent_config
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.runtime import Agent
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from ipsec_mesh.ike import message as codec
from ipsec_mesh.ike.constants import ExchangeType
from ipsec_mesh.xfrm import LifetimeCurrent
from tests.agent.test_xfrm_handover import NoServices
from tests.support.loopback import wait_for

PSK = base64.b64encode(b"r" * 32).decode()
PORT = 30000 + os.getpid() % 10000
R, P = "127.0.0.1", "127.0.0.2"  # the restarted sidecar, its surviving peer


def document(local: str, remote: str, initiate: list[str]) -> dict:
    return {
        "peerMap": {
            "local": {"identity": f"{local.replace('.', '-')}.default.pod.mesh.test", "addresses": [local]},
            "peerings": [{
                "name": "demo", "authentication": "psk", "psk": [{"id": "k1", "value": PSK}],
                "peers": [{"name": "other", "addresses": [f"{remote}/32"],
                           "identities": [f"{remote.replace('.', '-')}.default.pod.mesh.test"]}],
            }],
        },
        "dataplane": "none",
        "initiate": initiate,
        # DPD off: the loss counted here is the handover's, not a liveness exchange's.
        "ike": {"port": PORT, "nattPort": PORT + 1, "retransmitTimeout": 1, "dpd": 0},
    }


class KernelModel:
    """The restarted pod's kernel, shared by the earlier and the new instance: SAs in install
    order, their packet counters, and every install/delete in order with the outbound SA the
    policy uses after it (the newest one to the peer, as the kernel picks among SAs of one
    template)."""

    def __init__(self, remote: str):
        self.remote = remote
        self.sas: dict[int, object] = {}
        self.packets: dict[int, int] = {}
        self.kept: set[int] = set()  # what the earlier instance left
        #: (add | delete, in | out, kept | new, kept | new: the SA sent on afterwards)
        self.steps: list[tuple[str, str, str, str | None]] = []

    def sending(self) -> int | None:
        out = [spi for spi, sa in self.sas.items() if str(sa.dst) == self.remote]
        return out[-1] if out else None

    def restart(self) -> None:
        self.kept, self.steps = set(self.sas), []

    def dump_sas(self):
        return [SimpleNamespace(src=ipaddress.ip_address(str(sa.src)), dst=ipaddress.ip_address(str(sa.dst)),
                                spi=sa.spi, proto=50, owned=True, larval=False, reqid=sa.reqid)
                for sa in self.sas.values()]

    def dump_policies(self):
        return []

    def add_policies(self, specs):
        return [None] * len(specs)

    update_policies = delete_policies = add_policies

    def add_sa(self, spec):
        self.sas[spec.spi] = spec
        self.packets[spec.spi] = 0
        self._step("add", spec)

    def delete_sa(self, dst, spi, proto):
        sa = self.sas.pop(spi, None)
        if sa is not None:
            self._step("delete", sa)

    def _step(self, kind: str, sa) -> None:
        sending = self.sending()
        self.steps.append((kind, "out" if str(sa.dst) == self.remote else "in", "kept" if sa.spi in self.kept else "new",
                           None if sending is None else ("kept" if sending in self.kept else "new")))

    def get_sa(self, dst, spi, proto):
        if spi not in self.sas:
            return None
        return SimpleNamespace(current=LifetimeCurrent(packets=self.packets[spi], bytes=100 * self.packets[spi]))

    def close(self):
        pass


async def exchange_esp(kernel: KernelModel, peer: KernelModel, lost: dict[str, list[int]], stop: asyncio.Event):
    """One packet each way every 10 ms on the SA each side's kernel picks; a packet whose SPI
    the receiver has no SA for is lost."""
    while not stop.is_set():
        for sender, receiver, direction in ((kernel, peer, "restarted->peer"), (peer, kernel, "peer->restarted")):
            spi = sender.sending()
            if spi is None:
                continue
            if spi in receiver.sas:
                receiver.packets[spi] += 1
            else:
                lost[direction].append(spi)
        await asyncio.sleep(0.01)


def agent(local: str, remote: str, plane, initiate: list[str]) -> Agent:
    config = parse_agent_config(document(local, remote, initiate), Path("."))
    return Agent(config, plane, PeerSet(config.peer_map, config.ike))


async def test_a_restarted_responder_switches_only_once_the_initiating_peer_sends_on_the_new_child(monkeypatch):
    monkeypatch.setattr(xfrm_dataplane, "Xfrm", lambda netns: SimpleNamespace(subscribe=lambda: None,
                                                                             close=lambda: None,
                                                                             fileno=lambda: None))
    kernel, peer_kernel = KernelModel(P), KernelModel(R)

    def plane(xfrm: KernelModel) -> XfrmDataPlane:
        return XfrmDataPlane("restart-responder-test", xfrm=xfrm, services=NoServices(), rekey_grace=0.1)

    peer = agent(P, R, plane(peer_kernel), [])
    earlier = agent(R, P, plane(kernel), [P])
    await peer.start()
    await earlier.start()
    await wait_for(lambda: len(kernel.sas) == 2 and len(peer_kernel.sas) == 2, what="the first SAs")
    await earlier.stop(hand_over=True)  # SIGTERM: its SAs stay in the kernel; the peer keeps its IKE SA
    kernel.restart()
    stale = [sa.label for sa in peer.endpoint.sas.values() if sa.is_established]

    # The restarted side's own initiation never arrives, and its first IKE_AUTH answer is
    # lost (the peer retransmits 1 s later): the peer's initiation is the one that counts.
    dropped: list[str] = []
    restarted = agent(R, P, plane(kernel), [])
    sendto = runtime._IkeSocket.sendto

    def lossy_sendto(sock, data, remote):
        header = codec.peek_header(data[4:] if sock.natt else data)
        if sock.agent is restarted and header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response:
            dropped.append("our IKE_SA_INIT")
            return
        if (sock.agent is restarted and header.exchange == ExchangeType.IKE_AUTH and header.is_response
                and "IKE_AUTH" not in dropped):
            dropped.append("IKE_AUTH")
            return
        sendto(sock, data, remote)

    monkeypatch.setattr(runtime._IkeSocket, "sendto", lossy_sendto)
    lost: dict[str, list[int]] = {"restarted->peer": [], "peer->restarted": []}
    stop = asyncio.Event()
    traffic = asyncio.create_task(exchange_esp(kernel, peer_kernel, lost, stop))
    await restarted.start()
    try:
        assert restarted.dataplane.status()["kept_sas"] == {P: 2}
        # The peer initiates a new IKE SA (its own reasons: it restarted too, an ACQUIRE ...).
        config = peer.peers.lookup(P, R)
        peer.endpoint.initiate(config, (P, PORT), (R, PORT), peer.now(), config.children[0])
        peer.flush()
        await wait_for(lambda: not kernel.kept & set(kernel.sas), timeout=15, what="the kept SAs replaced")
        await asyncio.sleep(0.1)
        steps = list(kernel.steps)  # the stop (SIGINT) below removes the rest
        liveness = dict(restarted.metrics.liveness_checks.values)
        peer_sas = [(sa.label, sa.initiator) for sa in peer.endpoint.sas.values() if sa.is_established]
    finally:
        stop.set()
        await traffic
        await restarted.stop()
        await peer.stop()
    assert "IKE_AUTH" in dropped
    # Order: the new inbound SA; the new outbound one once ESP from the peer came on the new
    # inbound one (the peer had installed it); then, the new one sending, the kept outbound
    # after the grace and the kept inbound once quiet (either first).
    assert steps[:2] == [("add", "in", "new", "kept"), ("add", "out", "new", "new")], steps
    assert sorted(steps[2:]) == [("delete", "in", "kept", "new"), ("delete", "out", "kept", "new")], steps
    assert lost == {"restarted->peer": [], "peer->restarted": []}, {k: len(v) for k, v in lost.items()}
    assert liveness == {}, "the handover's byte-count queries are not liveness checks (DPD is off)"
    # Our answer's INITIAL_CONTACT made the peer drop its stale IKE SA, never the new one
    # (which the duplicate-SA rule could otherwise have chosen to delete).
    assert len(stale) == 1 and peer_sas == [(label, True) for label, _ in peer_sas] and len(peer_sas) == 1
    assert stale[0] not in dict(peer_sas)
