"""Network namespaces for the demo: commands, calls inside a namespace, the ESP probe, traffic."""

from __future__ import annotations

import os
import socket
import subprocess

from ..netns import in_netns
from .config import DemoError

__all__ = ["accept_all", "in_netns", "kernel_has_esp", "listen", "send", "sh"]


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise DemoError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


def kernel_has_esp() -> bool:
    """Try to add an ESP SA in a throw-away namespace."""
    name = f"ipsec-mesh-probe-{os.getpid()}"
    try:
        sh("ip", "netns", "add", name)
    except (DemoError, FileNotFoundError):
        return False
    try:
        key = "0x" + "11" * 36
        result = sh("ip", "-n", name, "xfrm", "state", "add", "src", "10.255.0.1", "dst", "10.255.0.2",
                    "proto", "esp", "spi", "0x1000", "mode", "transport", "aead", "rfc4106(gcm(aes))", key,
                    "128", check=False)
        return result.returncode == 0
    finally:
        sh("ip", "netns", "del", name, check=False)


def listen(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(1)
    s.settimeout(60)
    return s


def accept_all(listener: socket.socket, out: dict) -> None:
    try:
        conn, peer = listener.accept()
        out["local"], out["peer"] = conn.getsockname()[:2], peer[:2]
        conn.settimeout(60)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        out["data"] = b"".join(chunks)
        conn.close()
    except OSError:
        pass
    finally:
        listener.close()


def send(address: str, port: int, payload: bytes) -> tuple[str, int]:
    """Send `payload`; the address the socket was connected to, as the kernel reports it."""
    with socket.create_connection((address, port), timeout=60) as s:
        s.sendall(payload)
        return s.getpeername()[:2]
