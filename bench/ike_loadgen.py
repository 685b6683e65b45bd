"""IKE load generator: many IKE SAs (each with one CHILD_SA) from one address, using OUR engine.

Runs inside the load generator's network namespace (started by bench_ike_responder.py)
and prints one JSON line with what happened. Every IKE SA gets its own `IkeEndpoint`:
the generator plays many independent initiators sharing one UDP socket, so our own
initiator-side duplicate resolution (which would close all but one IKE SA per peer)
and INITIAL_CONTACT (disabled here) never interfere. Datagrams are routed to their
endpoint by the initiator SPI. Nothing is deleted at the end: the responder's SAs stay
up, so its CPU time is spent only on establishing them. With `hold` > 0 the generator
then keeps answering on every established IKE SA for that many seconds (the responder's
CHILD_SA rekeys and liveness checks: a steady state to measure).

    python bench/ike_loadgen.py --spec spec.json
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sidecar"))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from ipsec_mesh.ike.auth import CertCredential, PskCredential  # noqa: E402
from ipsec_mesh.ike.certificate import certificates_from_pem  # noqa: E402
from ipsec_mesh.ike.certs import TrustStore  # noqa: E402
from ipsec_mesh.ike.config import ChildConfig, PeerConfig, Retransmit  # noqa: E402
from ipsec_mesh.ike.constants import ProtocolId  # noqa: E402
from ipsec_mesh.ike.endpoint import IkeEndpoint  # noqa: E402
from ipsec_mesh.ike.events import ChildSaFailed, ChildSaInstallOutbound, IkeSaClosed, NegotiationFailed  # noqa: E402
from ipsec_mesh.ike.identity import Identity  # noqa: E402
from ipsec_mesh.ike.payloads import TrafficSelector  # noqa: E402
from ipsec_mesh.ike.proposals import parse_proposal  # noqa: E402

IKE_PORT = 500


@dataclass
class Spec:
    local: str
    remote: str
    local_id: str
    remote_id: str
    sas: int
    window: int
    deadline: float  # seconds for the whole run
    ike: str
    esp: str
    psk: str | None = None
    cert: str | None = None  # PEM paths for certificate authentication
    key: str | None = None
    ca: str | None = None
    hold: float = 0.0  # seconds to keep serving established SAs after the last one is up


def peer_config(spec: Spec) -> PeerConfig:
    if spec.psk is not None:
        credential, psks, trust = PskCredential(spec.psk.encode()), (spec.psk.encode(),), None
    else:
        chain = certificates_from_pem(Path(spec.cert).read_bytes())
        key = serialization.load_pem_private_key(Path(spec.key).read_bytes(), password=None)
        credential, psks = CertCredential(key, chain), ()
        trust = TrustStore.from_pem(Path(spec.ca).read_bytes())
    child = ChildConfig(name="bench", local_ts=(TrafficSelector.for_address(spec.local),),
                        remote_ts=(TrafficSelector.for_address(spec.remote),),
                        esp_proposals=(parse_proposal(spec.esp, ProtocolId.ESP),))
    return PeerConfig(name="bench", local_id=Identity.parse(f"fqdn:{spec.local_id}"), credential=credential,
                      remote_ids=(Identity.parse(f"fqdn:{spec.remote_id}"),), psks=psks, trust=trust,
                      ike_proposals=(parse_proposal(spec.ike, ProtocolId.IKE),), children=(child,),
                      dpd_delay=0, retransmit=Retransmit(timeout=2.0, tries=2), initial_contact=False)


def _refuse(local: str, remote: str) -> None:
    return None  # the generator only initiates


class LoadGenerator:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.config = peer_config(spec)
        self.local = (spec.local, IKE_PORT)
        self.remote = (spec.remote, IKE_PORT)
        self.sock = socket.socket(socket.AF_INET6 if ":" in spec.local else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(self.local)
        self.sock.setblocking(False)
        self.in_flight: dict[bytes, IkeEndpoint] = {}  # by initiator SPI
        self.up: dict[bytes, IkeEndpoint] = {}  # established, served while holding
        self.started = self.established = self.failed = self.rekeys = 0
        self.failures: dict[str, int] = {}

    def _start_one(self, now: float) -> None:
        endpoint = IkeEndpoint(_refuse)
        sa = endpoint.initiate(self.config, self.local, self.remote, now, self.config.children[0])
        self.in_flight[sa.spi_i] = endpoint
        self.started += 1
        self._drain(sa.spi_i, endpoint)

    def _drain(self, spi: bytes, endpoint: IkeEndpoint) -> None:
        for event in endpoint.events():
            if isinstance(event, ChildSaInstallOutbound) and spi in self.up:
                self.rekeys += 1
            elif isinstance(event, ChildSaInstallOutbound):
                self.established += 1
                self.up[spi] = self.in_flight.pop(spi)
            elif isinstance(event, (NegotiationFailed, ChildSaFailed, IkeSaClosed)) and spi in self.in_flight:
                reason = getattr(event, "reason", type(event).__name__)
                self.failures[reason] = self.failures.get(reason, 0) + 1
                self.failed += 1
                self.in_flight.pop(spi, None)
        for datagram in endpoint.datagrams():
            self.sock.sendto(datagram.data, datagram.remote)

    def run(self) -> dict:
        spec = self.spec
        begin, cpu = time.monotonic(), time.process_time()  # after imports and credentials: run time only
        deadline = begin + spec.deadline
        while time.monotonic() < deadline:
            now = time.monotonic()
            while len(self.in_flight) < spec.window and self.started < spec.sas:
                self._start_one(now)
            if not self.in_flight:
                break
            self._serve(self.in_flight)
        seconds, cpu_seconds = time.monotonic() - begin, time.process_time() - cpu  # before any hold
        if spec.hold > 0:
            self._hold(spec.hold)
        return {"started": self.started, "established": self.established, "failed": self.failed,
                "unfinished": len(self.in_flight), "failures": self.failures,
                "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 4),
                "held": spec.hold, "rekeys_answered": self.rekeys}

    def _hold(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._serve(self.up)

    def _serve(self, endpoints: dict[bytes, IkeEndpoint]) -> None:
        """Read what arrived (up to 50 ms), then run the timers that are due in `endpoints`."""
        readable, _, _ = select.select([self.sock], [], [], 0.05)
        if readable:
            self._read_all()
        now = time.monotonic()
        for spi, endpoint in list(endpoints.items()):
            due = endpoint.next_timer()
            if due is not None and due <= now:
                endpoint.tick(now)
                self._drain(spi, endpoint)

    def _read_all(self) -> None:
        for _ in range(1000):  # bounded: back to timers and new SAs now and then
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            endpoint = self.in_flight.get(data[:8]) or self.up.get(data[:8])
            if endpoint is None:
                continue  # an SA we are done with (or garbage)
            endpoint.receive(data, self.local, (addr[0], addr[1]), time.monotonic())
            self._drain(data[:8], endpoint)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="JSON file with the Spec fields")
    args = parser.parse_args()
    spec = Spec(**json.loads(Path(args.spec).read_text()))
    result = LoadGenerator(spec).run()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
