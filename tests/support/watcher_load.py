"""Long-polling watchers against a real standalone operator process, and the changes they wait for.

Shared by tests/operator/test_watchers_at_scale.py and bench/bench_mesh_api_watchers.py.
The operator runs in its own (spawned) process: the real StandaloneOperator over a YAML
mesh of `pods` pods in namespaces of `group` pods, one peering per namespace (each pod
lists the others of its namespace). It takes commands on a pipe, so that the moment a
change is applied is taken in the operator's own process, right before the call that
applies it. The watchers run in other spawned processes: one TLS connection per pod,
the pod's own token file (the standalone token authority's, checked as a TokenReview
would be), `GET /v1/peermap?version=N&wait=S` over and over on a kept-alive connection,
as the sidecar does. Each watcher notes when it read which version. Every wait is
bounded (`BOUND` seconds) so that a stuck process fails the run instead of hanging it.
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import multiprocessing
import os
import re
import resource
import ssl
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

BOUND = 300.0
#: Concurrent TLS handshakes per watcher process: a burst beyond the server's backlog would be dropped.
HANDSHAKES_IN_FLIGHT = 32
POLL_WAIT = 50
_VERSION = re.compile(rb'"version":([0-9]+)')


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pod_name(i: int, group: int) -> tuple[str, str]:
    return f"ns-{i // group}", f"pod-{i}"


def mesh_document(pods: int, group: int) -> dict[str, Any]:
    return {
        "trustDomain": "mesh.test",
        "pods": [{"name": pod_name(i, group)[1], "namespace": pod_name(i, group)[0], "labels": {"app": "mesh"},
                  "ips": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"]} for i in range(pods)],
        "peerings": [{"name": "all", "namespace": f"ns-{n}", "spec": {
            "selector": {"matchLabels": {"app": "mesh"}},
            "peers": [{"podSelector": {"matchLabels": {"app": "mesh"}}}]}} for n in range((pods + group - 1) // group)],
    }


def memory() -> dict[str, int]:
    """This process's VmRSS and RssAnon in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0])
    return fields


# ---- the operator process -------------------------------------------------------------------

async def start_standalone(directory: Path, port: int, config: Any) -> tuple[Any, asyncio.Event, asyncio.Task]:
    """A StandaloneOperator over `directory`'s mesh.yaml, once it serves (its api-url file written)."""
    from ipsec_mesh_operator.standalone import StandaloneOperator

    operator = StandaloneOperator(directory / "mesh.yaml", directory / "state", "127.0.0.1", port, base_config=config)
    stop = asyncio.Event()
    task = asyncio.create_task(operator.run(stop))
    while not (operator.state_dir / "api-url").exists():
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return operator, stop, task


def operator_process(directory: str, overrides: dict[str, Any], conn: Connection) -> None:
    raise_fd_limit()
    asyncio.run(_serve(Path(directory), overrides, conn))


async def _serve(directory: Path, overrides: dict[str, Any], conn: Connection) -> None:
    import gc

    from ipsec_mesh_operator import metrics
    from ipsec_mesh_operator.model.settings import OperatorConfig

    # A CA rotation may follow the last one after `ca_propagation`: 1 s, so that a run can repeat it.
    base = OperatorConfig(key_check_interval=3600, ca_propagation=1, **overrides)
    operator, stop, task = await start_standalone(directory, 0, base)
    url_file = operator.state_dir / "api-url"
    commands: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    index = operator.runtime.index

    def woken() -> float:
        counter = getattr(metrics, "PEER_MAP_WATCHERS_WOKEN", None)  # absent before the counter existed
        return counter._value.get() if counter is not None else float("nan")

    # CPU the interpreter's own collector spends, by generation (the harness's gc.collect() left out).
    automatic, harness, began = [0.0, 0.0, 0.0], [False], [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if harness[0]:
            return
        if phase == "start":
            began[0] = time.process_time()
        else:
            automatic[info["generation"]] += time.process_time() - began[0]

    gc.callbacks.append(on_gc)
    conn.send(url_file.read_text().strip())
    while True:
        command, *args = await commands.get()
        if command == "stop":
            break
        if command == "build-maps":  # what serving every pod once leaves cached, so that "stats" then counts connections
            for pod in list(index._versions):
                index.peer_map(pod)
            conn.send(len(index._versions))
        elif command == "stats":
            # The full collection (for the memory figures) is the harness's, not the operator's: its
            # CPU is reported apart ("gc"), as it would otherwise count in the change measured before it.
            start = os.times()
            harness[0] = True
            gc.collect()
            harness[0] = False
            times = os.times()
            conn.send({**memory(), "cpu": times.user + times.system, "open": operator.servers.pools["api"].open,
                       "gc": times.user + times.system - start.user - start.system,
                       "woken": woken(), "watching": metrics.PEER_MAP_WATCHERS._value.get(),
                       "gc_automatic": list(automatic), "gc_objects": len(gc.get_objects())})
        elif command == "profile":  # cProfile of the operator's process between "profile", "start" and "profile", PATH
            if args[0] == "start":
                profiler = cProfile.Profile()
                profiler.enable()
                conn.send(True)
            else:
                profiler.disable()
                profiler.dump_stats(args[0])
                conn.send(args[0])
        elif command == "gc-freeze":  # what the cluster operator does once its listing is in
            from ipsec_mesh_operator.controller.gcfreeze import freeze_start_up_state
            conn.send(freeze_start_up_state())
        elif command == "rotate-ca":
            before, applied = woken(), time.monotonic()
            refused = await operator.rotate_ca()
            conn.send({"refused": refused, "applied": applied, "version": index.version(pod_name(0, 1)), "affected": len(index._versions),
                       "woken": woken() - before})
        elif command == "move-pod":  # a new address for one pod: its map and its peers' maps change
            key = tuple(args[0])
            info = index.pod(key)
            last = int(info.ips[0].rsplit(".", 1)[1])
            moved = dataclasses.replace(info, ips=(f"{info.ips[0].rsplit('.', 1)[0]}.{(last + 128) % 256}",))
            before, applied = woken(), time.monotonic()
            affected = index.upsert_pod(moved)
            conn.send({"applied": applied, "version": index.version(key), "affected": len(affected),
                       "affected_pods": sorted(affected), "woken": woken() - before})
    stop.set()
    await asyncio.wait_for(task, 30)
    conn.close()


# ---- the watcher processes -------------------------------------------------------------------

@dataclasses.dataclass
class Watcher:
    pod: tuple[str, str]
    token: str
    #: (version, monotonic time it was read), every map this watcher read.
    reads: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    error: str | None = None


async def _watch(watcher: Watcher, host: str, port: int, context: ssl.SSLContext, handshakes: asyncio.Semaphore,
                 connected: asyncio.Queue, stream: bool) -> None:
    version = 0
    try:
        async with handshakes:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 60)
        try:
            while True:
                watch = "watch=1&" if stream else ""
                writer.write(f"GET /v1/peermap?{watch}version={version}&wait={POLL_WAIT} HTTP/1.1\r\nHost: mesh\r\n"
                             f"Authorization: Bearer {watcher.token}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                if stream and status == 200:
                    async for frame in _chunks(reader):  # until the operator ends the stream: ask again
                        version = _read(watcher, frame, connected)
                    continue
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if status == 200:
                    version = _read(watcher, body, connected)
                elif status != 304:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        finally:
            writer.close()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        watcher.error = f"{type(exc).__name__}: {exc}"[:300]
        if not watcher.reads:
            connected.put_nowait(False)


def _read(watcher: Watcher, document: bytes, connected: asyncio.Queue) -> int:
    """Note the version of a map just read; the first one tells the driver this watcher is in."""
    match = _VERSION.search(document)
    assert match is not None, document[:200]
    version = int(match.group(1))
    watcher.reads.append((version, time.monotonic()))
    if len(watcher.reads) == 1:
        connected.put_nowait(True)
    return version


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The map frames of a streamed answer (the operator writes one frame per chunk; heartbeats skipped)."""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        data = (await reader.readexactly(size + 2))[:-2]
        for frame in data.split(b"\n"):
            if frame:
                yield frame
    await reader.readuntil(b"\r\n")  # no trailers


def watcher_process(url: str, bundle: str, watchers: list[tuple[tuple[str, str], str]], conn: Connection,
                    stream: bool = False) -> None:
    raise_fd_limit()
    # This process only: asyncio's TLS read buffer is 256 KiB per connection (2.5 GB for the load's
    # clients at 10,000); a record is at most 16 KiB. The operator sizes its own (connections.py).
    from asyncio import sslproto
    sslproto.SSLProtocol.max_size = 17 * 1024
    asyncio.run(_drive(url, bundle, [Watcher(pod, token) for pod, token in watchers], conn, stream))


async def _drive(url: str, bundle: str, watchers: list[Watcher], conn: Connection, stream: bool) -> None:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cadata=bundle)
    handshakes, connected = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT), asyncio.Queue()
    tasks = [asyncio.create_task(_watch(w, host, int(port), context, handshakes, connected, stream)) for w in watchers]
    ok = 0
    for _ in watchers:
        ok += await asyncio.wait_for(connected.get(), BOUND)
    conn.send(("connected", ok))
    commands: asyncio.Queue = asyncio.Queue()
    asyncio.get_running_loop().add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    while (await commands.get()) != "stop":
        conn.send([(w.pod, w.reads, w.error) for w in watchers])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.close()


# ---- the whole run -------------------------------------------------------------------------

class WatcherLoad:
    """An operator process and `processes` watcher processes holding one long poll per pod.

    Use as a context manager; `connect()` brings every watcher in, `rotate_ca()` and
    `move_pod()` change something and return what the operator says it did, `reads()`
    what every watcher has read so far.
    """

    def __init__(self, directory: Path, pods: int, group: int, processes: int, stream: bool = False, **overrides: Any):
        self.directory, self.pods, self.group, self.processes = directory, pods, group, processes
        self.stream = stream
        self.overrides = overrides
        self.context = multiprocessing.get_context("spawn")
        self.children: list[Any] = []

    def __enter__(self) -> WatcherLoad:
        raise_fd_limit()
        (self.directory / "mesh.yaml").write_text(yaml.safe_dump(mesh_document(self.pods, self.group)))
        self.operator, theirs = self.context.Pipe()
        process = self.context.Process(target=operator_process, args=(str(self.directory), self.overrides, theirs))
        process.start()
        self.children.append(process)
        self.url = self._receive(self.operator, 120)
        self.state = self.directory / "state"
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for conn in [*getattr(self, "watchers", []), self.operator]:
            try:
                conn.send("stop" if conn is not self.operator else ("stop",))
            except OSError:
                pass
        for process in self.children:
            process.join(60)
            if process.is_alive():
                process.kill()

    @staticmethod
    def _receive(conn: Connection, bound: float = BOUND) -> Any:
        if not conn.poll(bound):
            raise TimeoutError(f"no answer within {bound} s")
        return conn.recv()

    def ask(self, *command: Any) -> dict[str, Any]:
        self.operator.send(command)
        return self._receive(self.operator)

    def token(self, pod: tuple[str, str]) -> str:
        return (self.state / "pods" / pod[0] / pod[1] / "token").read_text().strip()

    def connect(self, pods: int | None = None) -> int:
        """Start one watcher per pod (the first `pods`); returns how many read their first map."""
        bundle = (self.state / "ca-bundle.pem").read_text()
        chosen = [pod_name(i, self.group) for i in range(self.pods if pods is None else pods)]
        self.watchers = []
        for share in range(self.processes):
            mine = [(pod, self.token(pod)) for pod in chosen[share::self.processes]]
            ours, theirs = self.context.Pipe()
            process = self.context.Process(target=watcher_process, args=(self.url, bundle, mine, theirs, self.stream))
            process.start()
            self.children.append(process)
            self.watchers.append(ours)
        connected = sum(self._receive(conn)[1] for conn in self.watchers)
        self.settle(connected)
        return connected

    def settle(self, polls: int, bound: float = 60.0) -> None:
        """Wait until the operator holds `polls` long polls: every watcher is back, waiting for the next change."""
        deadline = time.monotonic() + bound
        while self.ask("stats")["watching"] != polls:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator does not hold {polls} long polls after {bound} s")
            time.sleep(0.1)

    def reads(self) -> dict[tuple[str, str], tuple[list[tuple[int, float]], str | None]]:
        everything = {}
        for conn in self.watchers:
            conn.send("collect")
        for conn in self.watchers:
            for pod, reads, error in self._receive(conn):
                everything[tuple(pod)] = (reads, error)
        return everything

    def delivery(self, change: dict[str, Any], pods: set[tuple[str, str]], bound: float = 60.0
                 ) -> dict[tuple[str, str], float]:
        """Seconds from the change being applied until each of `pods` read a map of its version or newer."""
        deadline = time.monotonic() + bound
        while True:
            reads = self.reads()
            latencies = {}
            for pod in pods:
                times = [t for version, t in reads[pod][0] if version >= change["version"]]
                if times:
                    latencies[pod] = min(times) - change["applied"]
            if len(latencies) == len(pods) or time.monotonic() > deadline:
                return latencies
            time.sleep(0.2)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


# ---- single requests from the test's own process ---------------------------------------------

async def open_poll(url: str, bundle: str, token: str, version: int) -> tuple[asyncio.StreamReader,
                                                                            asyncio.StreamWriter]:
    """A new TLS connection with one long poll sent on it (not answered yet)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        host, int(port), ssl=ssl.create_default_context(cadata=bundle)), 60)
    writer.write(f"GET /v1/peermap?version={version}&wait={POLL_WAIT} HTTP/1.1\r\nHost: mesh\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def status_of(reader: asyncio.StreamReader) -> int:
    return int((await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60))[9:12])
