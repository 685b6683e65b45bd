"""The agent's IKE socket: batched reads, one flush per batch, sends queued when the socket is full."""

from __future__ import annotations

import socket

import pytest

from ipsec_mesh.agent.runtime import _IkeSocket
from ipsec_mesh.ike.constants import NON_ESP_MARKER


class RecordingAgent:
    def __init__(self, fail_on: bytes | None = None):
        self.received: list[bytes] = []
        self.flushes = 0
        self.fail_on = fail_on

    def receive_only(self, data: bytes, local, remote) -> None:
        if data == self.fail_on:
            raise RuntimeError("engine bug")
        self.received.append(data)

    def flush(self) -> None:
        self.flushes += 1


class RecordingLoop:
    def __init__(self):
        self.readers: dict[int, object] = {}
        self.writers: dict[int, object] = {}

    def add_reader(self, fd, callback) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd) -> None:
        self.readers.pop(fd, None)

    def add_writer(self, fd, callback) -> None:
        self.writers[fd] = callback

    def remove_writer(self, fd) -> None:
        self.writers.pop(fd, None)


@pytest.fixture
def udp_pair():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    yield receiver, sender
    receiver.close()
    sender.close()


def test_one_wakeup_reads_every_queued_datagram_and_flushes_once(udp_pair):
    receiver, sender = udp_pair
    agent, loop = RecordingAgent(), RecordingLoop()
    ike = _IkeSocket(agent, loop, receiver, receiver.getsockname(), natt=False)
    ike.start()
    sent = [bytes([i]) * 40 for i in range(5)]
    for data in sent:
        sender.sendto(data, receiver.getsockname())
    loop.readers[receiver.fileno()]()
    assert agent.received == sent
    assert agent.flushes == 1
    loop.readers[receiver.fileno()]()  # nothing left: no flush for an empty wake-up
    assert agent.flushes == 1


def test_batch_is_bounded(udp_pair):
    receiver, sender = udp_pair
    agent, loop = RecordingAgent(), RecordingLoop()
    ike = _IkeSocket(agent, loop, receiver, receiver.getsockname(), natt=False)
    for i in range(_IkeSocket.READ_BATCH + 3):
        sender.sendto(i.to_bytes(2, "big"), receiver.getsockname())
    ike._read_ready()
    assert len(agent.received) == _IkeSocket.READ_BATCH
    ike._read_ready()
    assert len(agent.received) == _IkeSocket.READ_BATCH + 3
    assert agent.flushes == 2


def test_natt_socket_strips_the_marker_and_drops_keepalives(udp_pair):
    receiver, sender = udp_pair
    agent = RecordingAgent()
    ike = _IkeSocket(agent, RecordingLoop(), receiver, receiver.getsockname(), natt=True)
    sender.sendto(b"\xff", receiver.getsockname())
    sender.sendto(NON_ESP_MARKER + b"ike message", receiver.getsockname())
    ike._read_ready()
    assert agent.received == [b"ike message"]


def test_datagrams_before_a_failure_are_still_flushed(udp_pair):
    receiver, sender = udp_pair
    agent = RecordingAgent(fail_on=b"bad")
    ike = _IkeSocket(agent, RecordingLoop(), receiver, receiver.getsockname(), natt=False)
    sender.sendto(b"good", receiver.getsockname())
    sender.sendto(b"bad", receiver.getsockname())
    with pytest.raises(RuntimeError):
        ike._read_ready()
    assert agent.received == [b"good"]
    assert agent.flushes == 1


class FullThenFreeSocket:
    """A socket whose send buffer is full for the first `full_for` sends."""

    def __init__(self, full_for: int):
        self.full_for = full_for
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return 99

    def sendto(self, data: bytes, remote) -> int:
        if self.full_for:
            self.full_for -= 1
            raise BlockingIOError
        self.sent.append(data)
        return len(data)


def test_sends_wait_in_order_while_the_socket_is_full():
    sock, loop = FullThenFreeSocket(full_for=2), RecordingLoop()
    ike = _IkeSocket(RecordingAgent(), loop, sock, ("127.0.0.1", 500), natt=False)
    ike.sendto(b"one", ("127.0.0.2", 500))
    ike.sendto(b"two", ("127.0.0.2", 500))  # queued behind "one", not sent ahead of it
    assert sock.sent == [] and 99 in loop.writers
    loop.writers[99]()  # still full once
    assert sock.sent == [] and 99 in loop.writers
    loop.writers[99]()
    assert sock.sent == [b"one", b"two"]
    assert 99 not in loop.writers
    ike.sendto(b"three", ("127.0.0.2", 500))
    assert sock.sent == [b"one", b"two", b"three"]


def test_send_queue_is_bounded():
    sock, loop = FullThenFreeSocket(full_for=10**6), RecordingLoop()
    ike = _IkeSocket(RecordingAgent(), loop, sock, ("127.0.0.1", 500), natt=False)
    for i in range(_IkeSocket.MAX_UNSENT + 10):
        ike.sendto(i.to_bytes(4, "big"), ("127.0.0.2", 500))
    assert len(ike._unsent) == _IkeSocket.MAX_UNSENT
    sock.full_for = 0
    loop.writers[99]()
    assert sock.sent[0] == (0).to_bytes(4, "big") and len(sock.sent) == _IkeSocket.MAX_UNSENT
