"""The sidecar's own event loop (ipsec_mesh.aio) and the helpers written once on its interface.

Tests of shared helpers and of the loop interface run on both loops (`on`: ours, asyncio's),
since the product runs on ours in its process and on asyncio's in the in-process tests.
Bounds are checked by counting buffered bytes, connections and heap entries, never by time.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ipsec_mesh import aio
from ipsec_mesh.aio import loop as aio_loop
from ipsec_mesh.aio.streams import READ_SIZE
from tests.support.loops import on  # noqa: F401 (a fixture)
from tests.support.pki import MeshPki

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"


# --- timers and callbacks ---

def test_timers_fire_in_time_order_and_equal_times_in_call_order(on):
    async def main():
        loop, fired = aio.get_running_loop(), []
        now = loop.time()
        for when, tag in ((0.03, "c"), (0.01, "a"), (0.02, "b1"), (0.02, "b2")):
            loop.call_at(now + when, fired.append, tag)
        loop.call_soon(fired.append, "soon")
        await aio.sleep(0.06)
        return fired
    assert on(main()) == ["soon", "a", "b1", "b2", "c"]


def test_a_cancelled_handle_never_runs(on):
    async def main():
        loop, fired = aio.get_running_loop(), []
        for handle in (loop.call_later(0.01, fired.append, "later"), loop.call_soon(fired.append, "soon")):
            handle.cancel()
            assert handle.cancelled()
        loop.call_later(0.02, fired.append, "kept")
        await aio.sleep(0.04)
        return fired
    assert on(main()) == ["kept"]


def test_cancelled_timers_do_not_pile_up_in_the_heap():
    async def main():
        loop = aio.get_running_loop()
        for _ in range(10_000):  # what the agent's re-armed IKE timer does at every flush
            loop.call_later(3600, lambda: None).cancel()
        return len(loop._timers)
    assert aio.run(main()) <= 2 * aio_loop.MAX_CANCELLED_TIMERS + 2


def test_a_nan_deadline_is_refused_rather_than_breaking_the_heap():
    async def main():
        loop = aio.get_running_loop()
        with pytest.raises(ValueError):
            loop.call_at(float("nan"), lambda: None)
        with pytest.raises(ValueError):
            loop.call_later(float("nan"), lambda: None)
        return len(loop._timers)
    assert aio.run(main()) == 0


def test_an_exception_in_a_callback_is_logged_and_the_loop_goes_on(on, caplog):
    def boom():
        raise ValueError("boom")

    async def main():
        loop, fired = aio.get_running_loop(), []
        loop.call_soon(boom)
        loop.call_soon(fired.append, "after")
        await aio.sleep(0.01)
        return fired
    assert on(main()) == ["after"]
    assert "boom" in caplog.text


def test_an_exception_in_the_main_coroutine_reaches_the_caller(on):
    async def main():
        await aio.sleep(0)
        raise KeyError("lost")
    with pytest.raises(KeyError, match="lost"):
        on(main())


# --- tasks and cancellation ---

def test_a_cancelled_task_raises_the_class_product_code_catches(on):
    async def victim(seen):
        try:
            await aio.sleep(3600)
        except aio.CancelledError:
            seen.append("caught")
            raise

    async def main():
        seen = []
        task = aio.create_task(victim(seen), name="victim")
        await aio.sleep(0)
        assert task.cancel()
        with pytest.raises(aio.CancelledError):
            await task
        return seen, task.cancelled(), task.get_name()
    assert on(main()) == (["caught"], True, "victim")


def test_cancellation_is_a_base_exception_that_except_exception_lets_through(on):
    async def swallower():
        try:
            await aio.sleep(3600)
        except Exception:  # noqa: BLE001 (the point of the test)
            return "swallowed"

    async def main():
        task = aio.create_task(swallower())
        await aio.sleep(0)
        task.cancel()
        await aio.wait({task})
        return task.cancelled()
    assert on(main()) is True


def test_a_task_exception_is_kept_for_its_done_callbacks(on):
    async def failing():
        raise RuntimeError("inner")

    async def main():
        task, seen = aio.create_task(failing()), []
        task.add_done_callback(lambda t: seen.append(repr(t.exception())))
        await aio.wait({task})
        await aio.sleep(0)
        return seen
    assert on(main()) == ["RuntimeError('inner')"]


def test_timeout_raises_timeout_error_and_an_outside_cancel_stays_a_cancel(on):
    async def sleeper_in_timeout(delay):
        async with aio.timeout(delay):
            await aio.sleep(3600)

    async def main():
        with pytest.raises(TimeoutError):
            await sleeper_in_timeout(0.01)
        task = aio.create_task(sleeper_in_timeout(3600))
        await aio.sleep(0)
        task.cancel()
        await aio.wait({task})
        in_time = aio.create_task(aio.wait_for(aio.sleep(0, "done"), 5))
        return task.cancelled(), await in_time
    assert on(main()) == (True, "done")


def test_wait_for_cancels_what_it_waited_on(on):
    async def main():
        event, ended = aio.Event(), []

        async def waiter():
            try:
                await event.wait()
            finally:
                ended.append(True)
        with pytest.raises(TimeoutError):
            await aio.wait_for(waiter(), 0.01)
        return ended, len(event._waiters)
    assert on(main()) == ([True], 0)


def test_wait_first_completed_and_event(on):
    async def main():
        event = aio.Event()
        slow, fast = aio.create_task(aio.sleep(3600)), aio.create_task(event.wait())
        aio.get_running_loop().call_later(0.01, event.set)
        done, pending = await aio.wait({slow, fast}, return_when=aio.FIRST_COMPLETED)
        slow.cancel()
        return done == {fast}, pending == {slow}, fast.result(), event.is_set()
    assert on(main()) == (True, True, True, True)


def test_to_thread_returns_and_raises_on_the_loop(on):
    async def main():
        ident = await aio.to_thread(threading.get_ident)
        with pytest.raises(ZeroDivisionError):
            await aio.to_thread(lambda: 1 / 0)
        return ident != threading.get_ident()
    assert on(main()) is True


def test_without_asyncio_cancellation_timeouts_and_signals_work_on_our_own_classes():
    """The sidecar's process never imports asyncio: there, CancelledError is ours."""
    probe = """
import os, signal, sys
from ipsec_mesh import aio
assert aio.CancelledError.__module__ == "ipsec_mesh.aio.loop" and not issubclass(aio.CancelledError, Exception)
async def main():
    seen = []
    async def victim():
        try:
            await aio.sleep(3600)
        except aio.CancelledError:
            seen.append("cancelled")
            raise
    task = aio.create_task(victim())
    await aio.sleep(0)
    task.cancel()
    await aio.wait({task})
    try:
        await aio.wait_for(aio.sleep(3600), 0.01)
    except TimeoutError:
        seen.append("timeout")
    got = aio.Event()
    aio.get_running_loop().add_signal_handler(signal.SIGTERM, got.set)
    os.kill(os.getpid(), signal.SIGTERM)
    await aio.wait_for(got.wait(), 30)
    seen.append("signal")
    return seen
print(aio.run(main()), sorted(m for m in sys.modules if m.split(".")[0] in ("asyncio", "concurrent", "subprocess")))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(SIDECAR)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['cancelled', 'timeout', 'signal'] []"


# --- file descriptors and signals ---

def test_reader_and_writer_readiness(on):
    async def main():
        loop, seen = aio.get_running_loop(), []
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            readable = loop.create_future()
            loop.add_reader(a.fileno(), lambda: readable.done() or readable.set_result(a.recv(10)))
            writable = loop.create_future()
            loop.add_writer(a.fileno(), lambda: writable.done() or writable.set_result(True))
            seen.append(await aio.wait_for(writable, 5))
            assert loop.remove_writer(a.fileno())
            b.send(b"ping")
            seen.append(await aio.wait_for(readable, 5))
            assert loop.remove_reader(a.fileno())
            assert not loop.remove_reader(a.fileno())
        finally:
            a.close()
            b.close()
        return seen
    assert on(main()) == [True, b"ping"]


def test_a_signal_wakes_the_loop_and_runs_its_handler(on):
    async def main():
        loop, got = aio.get_running_loop(), aio.Event()
        loop.add_signal_handler(signal.SIGUSR1, got.set)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await aio.wait_for(got.wait(), 30)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        return got.is_set()
    assert on(main()) is True
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


# --- streams: TLS client, server, bounds ---

@pytest.fixture(scope="module")
def tls_server():
    """A blocking TLS server in a thread (so the client can run on either loop): answers each
    connection's first line with `echo: <line>` and closes."""
    pki = MeshPki()
    leaf = pki.issue("api", ips=["127.0.0.1"])
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"aio-tls-{os.getpid()}"
    directory.mkdir(exist_ok=True)
    (directory / "c.pem").write_bytes(leaf.cert_pem())
    (directory / "k.pem").write_bytes(leaf.key_pem())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "c.pem", directory / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()

    def serve():
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    line = tls.makefile("rb").readline()
                    tls.sendall(b"echo: " + line)
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield pki, listener.getsockname()[1]
    stopping.set()
    thread.join(10)
    listener.close()


def test_a_tls_client_verifies_the_server_and_talks(on, tls_server):
    pki, port = tls_server
    trusting = ssl.create_default_context(cadata=pki.root.cert_pem().decode())

    async def main():
        stream = await aio.open_connection("127.0.0.1", port, ssl=trusting, limit=1024)
        try:
            stream.write(b"hello\n")
            await stream.drain()
            answer = await aio.wait_for(stream.readuntil(b"\n"), 10)
            rest = await aio.wait_for(stream.read(100), 10)
        finally:
            stream.abort()
        with pytest.raises(ssl.SSLCertVerificationError):
            await aio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context(
                cadata=MeshPki().root.cert_pem().decode()))
        return answer, rest
    assert on(main()) == (b"echo: hello\n", b"")


def test_server_accepts_serves_and_bounds_its_connections(on):
    async def main():
        release = aio.Event()

        async def handler(stream):
            line = await stream.readline()
            await release.wait()
            stream.write(b"got " + line)
            await stream.drain()

        server = await aio.start_server(handler, "127.0.0.1", 0, limit=64, max_connections=2)
        port = server.sockets[0].getsockname()[1]
        # The first by name: resolved in a thread (to_thread), ::1 refused, then 127.0.0.1.
        clients = [await aio.open_connection(host, port) for host in ("localhost", "127.0.0.1", "127.0.0.1")]
        for number, client in enumerate(clients):
            client.write(b"%d\n" % number)
            await client.drain()
        refused = await aio.wait_for(clients[2].read(10), 10)  # the third is closed at once
        release.set()
        answers = [await aio.wait_for(client.readuntil(b"\n"), 10) for client in clients[:2]]
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()
        return refused, server.refused, answers
    assert on(main()) == (b"", 1, [b"got 0\n", b"got 1\n"])


def test_a_line_past_the_limit_is_refused_with_at_most_one_read_beyond_it(on):
    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        stream = aio.Stream(b, limit=1000)
        def send():
            try:
                a.sendall(b"x" * (1 << 20))
            except OSError:
                pass  # the reader gave up and closed: expected

        sender = threading.Thread(target=send, daemon=True)
        sender.start()  # 1 MiB without a newline, more than the socket buffers hold
        try:
            with pytest.raises(aio.LimitOverrunError):
                await aio.wait_for(stream.readuntil(b"\n"), 10)
            buffered = len(stream._buffer)
            with pytest.raises(ValueError):
                await aio.wait_for(stream.readline(), 10)
        finally:
            stream.close()
            a.close()
            sender.join(10)
        return buffered
    assert on(main()) <= 1000 + READ_SIZE


def test_memory_streams_read_exactly_and_report_what_came_before_the_end(on):
    async def main():
        stream = aio.Stream(limit=10)
        stream.feed_data(b"ab\r\ncd")
        stream.feed_eof()
        line = await stream.readuntil(b"\r\n")
        with pytest.raises(aio.IncompleteReadError) as short:
            await stream.readexactly(3)
        silent = aio.Stream(limit=10)
        with pytest.raises(TimeoutError):
            await aio.wait_for(silent.read(1), 0.01)
        return line, short.value.partial
    assert on(main()) == (b"ab\r\n", b"cd")


IDNA_PROBE = """
import os, socket, ssl, sys, threading
from ipsec_mesh import aio

server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
server_context.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
listener = socket.create_server(("127.0.0.1", 0))

def serve():
    conn, _ = listener.accept()
    with server_context.wrap_socket(conn, server_side=True) as tls:
        tls.sendall(b"hi\\n")

threading.Thread(target=serve, daemon=True).start()
client = ssl.create_default_context(cadata=os.environ["ROOT"])

async def main():
    stream = await aio.open_connection("localhost", listener.getsockname()[1], ssl=client)
    try:
        return await aio.wait_for(stream.readline(), 10)
    finally:
        stream.abort()

print(aio.run(main()), sorted(m for m in sys.modules if m in ("encodings.idna", "stringprep", "unicodedata")))
"""


def test_a_tls_connection_by_host_name_loads_no_idna_codec(tmp_path):
    """getaddrinfo and ssl encode a str host name with the idna codec (encodings.idna, stringprep, unicodedata:
    memory every sidecar keeps); an ASCII name goes to them as bytes, and TLS still checks the name."""
    pki = MeshPki()
    leaf = pki.issue("api", dns=["localhost"])
    (tmp_path / "c.pem").write_bytes(leaf.cert_pem())
    (tmp_path / "k.pem").write_bytes(leaf.key_pem())
    result = subprocess.run([sys.executable, "-c", IDNA_PROBE], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "CERT": str(tmp_path / "c.pem"), "KEY": str(tmp_path / "k.pem"),
                                 "ROOT": pki.root.cert_pem().decode()})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b'hi\\n' []"
