"""Health, readiness, status and metrics over plain HTTP on a local address.

A deliberately small HTTP/1.0 responder on the sidecar's own streams (aio): a few GET routes, no
request bodies, bounded reads and a timeout, so the sidecar stays lean (no web
framework in a process that lives in every pod). At most `MAX_CONNECTIONS` connections
at a time, each for at most READ_TIMEOUT per line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .. import aio

log = logging.getLogger("ipsec_mesh.agent")

MAX_REQUEST_LINE = 2048
MAX_HEADERS = 64
MAX_CONNECTIONS = 16  # probes and `status` come one at a time; more is someone else
READ_TIMEOUT = 5.0


Response = tuple[int, str, bytes]
Route = Callable[[], Response]


def text(status: int, body: str) -> Response:
    return status, "text/plain", body.encode()


def json_response(document: Any, status: int = 200) -> Response:
    return status, "application/json", json.dumps(document, indent=1).encode() + b"\n"


def readiness(agent) -> Response:
    """200 only when the agent is started and its data plane does all the peer map asks."""
    reason = agent.not_ready_reason() if agent is not None else "bootstrapping"
    return text(200, "ready\n") if reason is None else text(503, f"not ready: {reason}\n")


def agent_routes(agent, ready_path: str = "/readyz") -> dict[str, Route]:
    """The routes of a running agent (standalone mode; mesh mode adds its own around them)."""

    def metrics() -> Response:
        sas = agent.endpoint.status()
        body = agent.metrics.render(len(sas), sum(len(s["children"]) for s in sas),
                                    agent.dataplane.status().get("services"))
        return 200, "text/plain; version=0.0.4", body

    return {
        "/healthz": lambda: text(200, "ok\n"),
        ready_path: lambda: readiness(agent),
        "/status": lambda: json_response(agent.status()),
        "/metrics": metrics,
    }


class StatusServer:
    """GET routes on host:port; `routes` maps a path to what answers it (default: `agent_routes`)."""

    def __init__(self, agent, host: str, port: int, *, routes: Mapping[str, Route] | None = None):
        self.routes = routes if routes is not None else agent_routes(agent)
        self.host = host
        self.port = port
        self.server: aio.Server | None = None

    async def start(self) -> None:
        self.server = await aio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_LINE,
                                             max_connections=MAX_CONNECTIONS)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def route(self, path: str) -> Response:
        handler = self.routes.get(path)
        return handler() if handler is not None else text(404, "not found\n")

    async def _handle(self, stream: aio.Stream) -> None:
        try:
            line = await aio.wait_for(stream.readline(), READ_TIMEOUT)
            for _ in range(MAX_HEADERS):  # skip headers, bounded
                header = await aio.wait_for(stream.readline(), READ_TIMEOUT)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("ascii", "replace").split()
            if len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, "text/plain", b"bad request\n"
            else:
                status, ctype, body = self.route(parts[1].split("?", 1)[0])
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}[status]
            stream.write(f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await stream.drain()
        except (TimeoutError, aio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            stream.close()
