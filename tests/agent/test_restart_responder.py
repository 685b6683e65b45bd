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
from ipsec_mesh.agent.dataplane import NullDataPlane
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.runtime import Agent
from ipsec_mesh.agent.xfrm_dataplane import XfrmDataPlane
from ipsec_mesh.ike import message as codec
from ipsec_mesh.ike.constants import ExchangeType
from ipsec_mesh.xfrm import LifetimeCurrent, owned_reqid
from tests.agent.test_xfrm_handover import NoServices
from tests.support.loopback import wait_for

PSK = base64.b64encode(b"r" * 32).decode()
PORT = 30000 + os.getpid() % 10000
R, P = "127.0.0.1", "127.0.0.2"  # the restarted sidecar, its surviving peer
KEPT_IN, KEPT_OUT = 0x0A000001, 0x0B000001  # the SAs the restarted one's earlier instance left


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
    """The restarted pod's kernel: its SAs in install order, their packet counters, and
    every install/delete in order with the outbound SA the policy uses after it."""

    def __init__(self):
        ip = ipaddress.ip_address
        self.sas: dict[int, object] = {
            KEPT_IN: SimpleNamespace(src=ip(P), dst=ip(R), spi=KEPT_IN, proto=50, owned=True, larval=False,
                                     reqid=owned_reqid(1)),
            KEPT_OUT: SimpleNamespace(src=ip(R), dst=ip(P), spi=KEPT_OUT, proto=50, owned=True, larval=False,
                                      reqid=owned_reqid(1))}
        self.packets = dict.fromkeys(self.sas, 0)
        #: (add | delete, in | out, kept | new, the SA the kernel sends on afterwards)
        self.steps: list[tuple[str, str, str, int | None]] = []

    def sending(self) -> int | None:
        """The outbound SA the kernel picks: the newest one to the peer."""
        out = [spi for spi, sa in self.sas.items() if str(sa.dst) == P]
        return out[-1] if out else None

    def dump_sas(self):
        return list(self.sas.values())

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
        self.steps.append((kind, "out" if str(sa.dst) == P else "in", "kept" if sa.spi in (KEPT_IN, KEPT_OUT) else "new",
                           None if sending is None else ("kept" if sending == KEPT_OUT else "new")))

    def get_sa(self, dst, spi, proto):
        if spi not in self.sas:
            return None
        return SimpleNamespace(current=LifetimeCurrent(packets=self.packets[spi], bytes=100 * self.packets[spi]))

    def close(self):
        pass


async def exchange_esp(kernel: KernelModel, peer: NullDataPlane, lost: dict[str, list[int]], stop: asyncio.Event):
    """One packet each way every 10 ms on the SA each side's kernel picks; a packet whose SPI
    the receiver has no inbound SA for is lost."""
    while not stop.is_set():
        spi = kernel.sending()
        if spi is not None and spi not in peer.inbound:
            lost["restarted->peer"].append(spi)
        spi = next(reversed(peer.outbound), None)
        if spi is not None:
            if spi in kernel.sas:
                kernel.packets[spi] += 1
            else:
                lost["peer->restarted"].append(spi)
        await asyncio.sleep(0.01)


async def test_a_restarted_responder_switches_only_once_the_initiating_peer_sends_on_the_new_child(monkeypatch):
    monkeypatch.setattr(xfrm_dataplane, "Xfrm", lambda netns: SimpleNamespace(subscribe=lambda: None,
                                                                             close=lambda: None,
                                                                             fileno=lambda: None))
    kernel = KernelModel()
    plane = XfrmDataPlane("restart-responder-test", xfrm=kernel, services=NoServices(), rekey_grace=0.1)
    config = parse_agent_config(document(R, P, []), Path("."))
    restarted = Agent(config, plane, PeerSet(config.peer_map, config.ike))
    peer_config = parse_agent_config(document(P, R, [R]), Path("."))
    peer_plane = NullDataPlane()
    # The peer's SAs with the earlier instance: still in its kernel, carrying traffic.
    peer_plane.inbound[KEPT_OUT] = peer_plane.outbound[KEPT_IN] = None
    peer = Agent(peer_config, peer_plane, PeerSet(peer_config.peer_map, peer_config.ike))

    # The restarted side's own initiation never arrives, and its first IKE_AUTH answer is
    # lost (the peer retransmits 1 s later): the peer initiates and installs late.
    dropped: list[str] = []
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
    traffic = asyncio.create_task(exchange_esp(kernel, peer_plane, lost, stop))
    await restarted.start()
    assert plane.status()["kept_sas"] == {P: 2}
    await peer.start()
    try:
        await wait_for(lambda: KEPT_OUT not in kernel.sas and KEPT_IN not in kernel.sas, timeout=15,
                       what="the kept SAs replaced")
        await asyncio.sleep(0.1)
        steps = list(kernel.steps)  # the stop (SIGINT) below removes the rest
    finally:
        stop.set()
        await traffic
        await restarted.stop()
        await peer.stop()
    assert "IKE_AUTH" in dropped
    # Order: the new inbound SA; the new outbound one once ESP from the peer came on the new
    # inbound one (the peer had installed it); the kept outbound; the kept inbound once quiet.
    assert steps == [("add", "in", "new", "kept"), ("add", "out", "new", "new"),
                     ("delete", "out", "kept", "new"), ("delete", "in", "kept", "new")], steps
    assert lost == {"restarted->peer": [], "peer->restarted": []}, {k: len(v) for k, v in lost.items()}
