"""Loopback helpers for tests that talk to a sidecar's or operator's HTTP endpoints in-process."""

from __future__ import annotations

import asyncio

from ipsec_mesh import aio


async def http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(1 << 20), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> None:
    """Poll `predicate` on the running loop (ours or asyncio's) until it holds; AssertionError
    after `timeout` seconds."""
    deadline = aio.get_running_loop().time() + timeout
    while not predicate():
        if aio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await aio.sleep(interval)
