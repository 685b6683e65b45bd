"""Readiness (can this replica serve?) and liveness (is its event loop turning?).

Readiness is served by the metrics server at /readyz: 200 only when every server this
replica must run listens and the index has completed its first listing of pods,
namespaces and peerings; before that a sidecar or the API server would get answers from
an empty index. Liveness is served at /livez by a thread of its own, so it answers
even when the event loop is wedged, and says so: the loop stamps a heartbeat every
second, and a heartbeat older than `max_stall` is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiohttp import web

HEARTBEAT_SECONDS = 1.0


class Readiness:
    def __init__(self) -> None:
        self.required: set[str] = set()
        self.listening: set[str] = set()
        self.unsynced: set[str] = set()

    def require(self, servers: Iterable[str], listings: Iterable[str]) -> None:
        self.required |= set(servers)
        self.unsynced |= set(listings)

    def synced(self, listing: str) -> None:
        self.unsynced.discard(listing)

    def problems(self) -> list[str]:
        missing = sorted(self.required - self.listening)
        return ([f"{name} server not listening" for name in missing]
                + [f"{name} not listed yet" for name in sorted(self.unsynced)])

    async def handle(self, request: web.Request) -> web.Response:
        problems = self.problems()
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ready\n")


class Liveness:
    """Heartbeat from the event loop, checked from a thread that serves /livez."""

    def __init__(self, max_stall: float, clock: Callable[[], float] = time.monotonic):
        self.max_stall = max_stall
        self.clock = clock
        self.last_beat = clock()
        self._server: ThreadingHTTPServer | None = None
        self._task: asyncio.Task | None = None

    def stall(self) -> float:
        return self.clock() - self.last_beat

    def alive(self) -> bool:
        return self.stall() <= self.max_stall

    async def _beat(self) -> None:
        while True:
            self.last_beat = self.clock()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def start(self, host: str, port: int) -> int:
        liveness = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != "/livez":
                    self.send_error(404)
                    return
                ok = liveness.alive()
                body = (b"ok\n" if ok else
                        f"event loop stalled for {liveness.stall():.0f}s\n".encode())
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass  # a probe every few seconds is not news

        self.last_beat = self.clock()
        self._task = asyncio.get_running_loop().create_task(self._beat())
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="liveness", daemon=True).start()
        return self._server.server_address[1]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()
