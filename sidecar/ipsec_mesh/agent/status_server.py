"""Health, readiness, status and metrics over plain HTTP on a local address.

A deliberately small HTTP/1.0 responder on asyncio streams: four GET routes, no
request bodies, bounded reads and a timeout, so the sidecar stays lean (no web
framework in a process that lives in every pod).
"""

from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("ipsec_mesh.agent")

MAX_REQUEST_LINE = 2048
MAX_HEADERS = 64
READ_TIMEOUT = 5.0


class StatusServer:
    def __init__(self, agent, host: str, port: int):
        self.agent = agent
        self.host = host
        self.port = port
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_LINE)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def route(self, path: str) -> tuple[int, str, bytes]:
        agent = self.agent
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            return (200, "text/plain", b"ready\n") if agent.ready else (503, "text/plain", b"not ready\n")
        if path == "/status":
            return 200, "application/json", json.dumps(agent.status(), indent=1).encode() + b"\n"
        if path == "/metrics":
            sas = agent.endpoint.status()
            body = agent.metrics.render(len(sas), sum(len(s["children"]) for s in sas))
            return 200, "text/plain; version=0.0.4", body
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            for _ in range(MAX_HEADERS):  # skip headers, bounded
                header = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("ascii", "replace").split()
            if len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, "text/plain", b"bad request\n"
            else:
                status, ctype, body = self.route(parts[1].split("?", 1)[0])
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()
