"""Sidecars' peer-map watches across an operator restart (kill -9, then a new process on the same port).

Used by bench/bench_operator_restart.py. The mesh, the pods' tokens and the operator are
watcher_load's (a real StandaloneOperator over its YAML mesh, in a spawned process); what
differs is the client: every watcher is the sidecar's own `MeshApiClient.watch_peer_maps`
(one TLS connection per request, the product's retry and backoff), so a restart measures
what the product does when its operator goes away and comes back. The operator process
notes, in its own clock, when each pod's first long poll reached the new instance (after
TLS, the token check and the pod lookup): that is when the watcher is back. The watchers
count every failed request by kind (refused, timeout, reset, tls, other).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import socket
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

from tests.support.watcher_load import (
    BOUND,
    HANDSHAKES_IN_FLIGHT,
    WatcherLoad,
    mesh_document,
    pod_name,
    raise_fd_limit,
    start_standalone,
)

_receive = WatcherLoad._receive


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the operator process ---------------------------------------------------------------------

def operator_process(directory: str, port: int, overrides: dict[str, Any], conn: Connection) -> None:
    raise_fd_limit()
    asyncio.run(_serve(Path(directory), port, overrides, conn))


async def _serve(directory: Path, port: int, overrides: dict[str, Any], conn: Connection) -> None:
    from ipsec_mesh_operator.controller.runtime import OperatorRuntime
    from ipsec_mesh_operator.model.settings import OperatorConfig

    first: dict[tuple[str, str], float] = {}
    serve = OperatorRuntime.wait_for_peer_map_json

    async def noted(self: OperatorRuntime, pod: Any, since: int, timeout: float) -> bytes | None:
        first.setdefault(tuple(pod), time.monotonic())
        return await serve(self, pod, since, timeout)

    OperatorRuntime.wait_for_peer_map_json = noted  # type: ignore[method-assign]  # this process only
    operator, stop, task = await start_standalone(directory, port, OperatorConfig(key_check_interval=3600,
                                                                                 **overrides))
    conn.send(((operator.state_dir / "api-url").read_text().strip(), time.monotonic()))
    commands: asyncio.Queue = asyncio.Queue()
    asyncio.get_running_loop().add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    while (await commands.get()) != "stop":
        conn.send(dict(first))
    stop.set()
    await asyncio.wait_for(task, 30)


# ---- the watcher processes --------------------------------------------------------------------

def failure_kind(message: str) -> str:
    """What a failed mesh API request ran into, from MeshApiRequestError's text."""
    if "ConnectionRefused" in message:
        return "refused"
    if "no complete answer" in message:
        return "timeout"
    if "SSL" in message or "certificate" in message:
        return "tls"
    if "Reset" in message or "EOF" in message or "Incomplete" in message or "closed" in message:
        return "reset"
    return "other"


def watcher_process(url: str, bundle: str, watchers: list[tuple[tuple[str, str], str]], wait: float,
                    conn: Connection) -> None:
    raise_fd_limit()
    logging.getLogger("ipsec_mesh.meshapi").setLevel(logging.ERROR)  # each retry is counted, not logged
    asyncio.run(_drive(url, bundle, watchers, wait, conn))


async def _drive(url: str, bundle: str, watchers: list[tuple[tuple[str, str], str]], wait: float,
                 conn: Connection) -> None:
    from ipsec_mesh.meshapi.client import MeshApiClient
    from ipsec_mesh.meshapi.errors import MeshApiRequestError
    from ipsec_mesh.meshapi.retry import retry

    failures: Counter[str] = Counter()
    failed_at: list[float] = []
    context = MeshApiClient._context(bundle)
    started = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)  # the first maps: pods start over minutes, not at once
    connected: asyncio.Queue[bool] = asyncio.Queue()

    def failed(exc: MeshApiRequestError) -> None:
        failures[failure_kind(str(exc))] += 1
        failed_at.append(time.monotonic())

    async def watch(token: str) -> None:
        client = MeshApiClient(url, ca_bundle=bundle, token=lambda: token)
        client._ssl = context  # one CA store for the process, not one per simulated pod
        try:
            async with started:  # the sidecar's bootstrap: the first map, retried as the product does
                first = await retry(functools.partial(client.fetch_peer_map, 0, 0), "first peer map")
        except MeshApiRequestError:
            connected.put_nowait(False)
            return
        assert first is not None
        version = first.version
        connected.put_nowait(True)
        async for peer_map in client.watch_peer_maps(version, wait, on_error=failed):
            version = peer_map.version

    tasks = [asyncio.create_task(watch(token)) for _, token in watchers]
    ok = 0
    for _ in watchers:
        ok += await asyncio.wait_for(connected.get(), BOUND)
    conn.send(ok)
    commands: asyncio.Queue = asyncio.Queue()
    asyncio.get_running_loop().add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    while (await commands.get()) != "stop":
        conn.send((dict(failures), list(failed_at)))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---- the whole run ----------------------------------------------------------------------------

class RestartLoad:
    """An operator process, restartable on its port, and `processes` processes of watching sidecars."""

    def __init__(self, directory: Path, pods: int, group: int, processes: int, wait: float = 30.0,
                 **overrides: Any):
        self.directory, self.pods, self.group, self.processes, self.wait = directory, pods, group, processes, wait
        self.overrides = overrides
        self.context = multiprocessing.get_context("spawn")
        self.port = free_port()
        self.watchers: list[Connection] = []
        self.connected = 0
        self.children: list[Any] = []

    def __enter__(self) -> RestartLoad:
        raise_fd_limit()
        (self.directory / "mesh.yaml").write_text(yaml.safe_dump(mesh_document(self.pods, self.group)))
        self.state = self.directory / "state"
        self.url, self.listening = self.start_operator()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for conn in [*self.watchers, self.operator]:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for process in self.children:
            process.join(60)
            if process.is_alive():
                process.kill()

    def start_operator(self) -> tuple[str, float]:
        (self.state / "api-url").unlink(missing_ok=True)  # a killed operator leaves it behind
        self.operator, theirs = self.context.Pipe()
        self.operator_proc = self.context.Process(target=operator_process,
                                                  args=(str(self.directory), self.port, self.overrides, theirs))
        self.operator_proc.start()
        self.children.append(self.operator_proc)
        return _receive(self.operator, 120)  # type: ignore[no-any-return]

    def connect(self) -> int:
        """One watching sidecar per pod; returns how many read their first map."""
        bundle = (self.state / "ca-bundle.pem").read_text()
        pods = [pod_name(i, self.group) for i in range(self.pods)]
        for share in range(self.processes):
            mine = [(pod, (self.state / "pods" / pod[0] / pod[1] / "token").read_text().strip())
                    for pod in pods[share::self.processes]]
            ours, theirs = self.context.Pipe()
            process = self.context.Process(target=watcher_process, args=(self.url, bundle, mine, self.wait, theirs))
            process.start()
            self.children.append(process)
            self.watchers.append(ours)
        self.connected = sum(_receive(conn) for conn in self.watchers)
        return self.connected

    def restart(self) -> tuple[float, float]:
        """kill -9 the operator and start a new one on the same port: (killed, listening again), monotonic."""
        self.operator_proc.kill()
        killed = time.monotonic()
        self.operator_proc.join(30)
        self.url, listening = self.start_operator()
        return killed, listening

    def first_polls(self) -> dict[tuple[str, str], float]:
        self.operator.send("poll")
        return _receive(self.operator)  # type: ignore[no-any-return]

    def back(self, bound: float = BOUND) -> dict[tuple[str, str], float]:
        """Wait (at most `bound` s) until every connected pod's long poll reached the current operator."""
        deadline = time.monotonic() + bound
        while True:
            first = self.first_polls()
            if len(first) >= self.connected or time.monotonic() > deadline:
                return first
            time.sleep(0.5)

    def failures(self) -> tuple[Counter[str], list[float]]:
        total: Counter[str] = Counter()
        times: list[float] = []
        for conn in self.watchers:
            conn.send("collect")
        for conn in self.watchers:
            counts, at = _receive(conn)
            total.update(counts)
            times.extend(at)
        return total, times
