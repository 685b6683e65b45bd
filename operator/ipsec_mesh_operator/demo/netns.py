"""The demo's traffic between pods and its ESP probe; the namespace primitives are `..netns`."""

from __future__ import annotations

import socket

from ..netns import NetnsError, add_netns, delete_netns, run, unique_name

__all__ = ["accept_all", "answer_once", "ask", "kernel_has_esp", "listen", "send"]


def kernel_has_esp() -> bool:
    """Try to add an ESP SA in a throw-away namespace."""
    name = unique_name("ipsec-mesh-probe")
    try:
        add_netns(name)
    except (NetnsError, FileNotFoundError):
        return False
    try:
        key = "0x" + "11" * 36
        result = run("ip", "-n", name, "xfrm", "state", "add", "src", "10.255.0.1", "dst", "10.255.0.2",
                     "proto", "esp", "spi", "0x1000", "mode", "transport", "aead", "rfc4106(gcm(aes))", key,
                     "128", check=False)
        return result.returncode == 0
    finally:
        delete_netns(name)


def listen(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(1)
    s.settimeout(60)
    return s


def accept_all(listener: socket.socket, out: dict) -> None:
    try:
        conn, _ = listener.accept()
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


def send(address: str, port: int, payload: bytes) -> None:
    with socket.create_connection((address, port), timeout=60) as s:
        s.sendall(payload)


def answer_once(listener: socket.socket, reply: bytes, out: dict) -> None:
    """Accept one connection, read its one-line request, send `reply`, close; what the kernel said into `out`."""
    try:
        conn, peer = listener.accept()
        out["local"], out["peer"] = conn.getsockname()[:2], peer[:2]
        with conn:
            conn.settimeout(60)
            request = b""
            while not request.endswith(b"\n") and len(request) < 1024 and (chunk := conn.recv(1024)):
                request += chunk
            out["request"] = request
            conn.sendall(reply)
    except OSError:
        pass
    finally:
        listener.close()


def ask(address: str, port: int, request: bytes) -> tuple[tuple[str, int], bytes]:
    """Send a one-line request, read the answer to its end; the address the socket was connected to, and the answer."""
    with socket.create_connection((address, port), timeout=60) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return s.getpeername()[:2], b"".join(chunks)
