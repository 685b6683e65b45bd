"""Calls inside another network namespace of this node (root only), without forking,
and stopping the processes we started there.

`setns(2)` changes the calling thread's namespace only, so a helper thread enters the
namespace, runs the call and ends; the caller's namespace is untouched. Used where the
standalone tools do what `kubectl exec` does in a cluster (reading a sidecar's local
/status), by the demo, and by the host and interop tests (the VM guest's helpers run
inside the VM with their own copy: see tests/vm/netns_guest.py).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from typing import Any

from pyroute2 import netns as pyroute2_netns

#: A name under /run/netns as `ip netns add` makes them; never a path (no "/", not "." or "..").
NETNS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


class NetnsUnavailable(OSError):
    """The namespace cannot be entered here: it does not exist on this node, or we are not root."""


def check_netns_name(value: Any) -> str:
    """`value` if it names a namespace under /run/netns; ValueError otherwise (a path could name any namespace)."""
    if not isinstance(value, str) or not NETNS_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a network namespace name (1-63 of A-Z a-z 0-9 _ . -, no path)")
    return value


def in_netns(netns: str, function, *args, timeout: float = 60):
    """Call `function(*args)` in a thread that has entered `netns`; its result, or its exception.
    TimeoutError if it has not finished within `timeout` seconds (the thread is left to end)."""
    outcome: dict = {}

    def body():
        try:
            pyroute2_netns.setns(netns, flags=0)  # this thread only; flags=0: never create one
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            outcome["error"] = NetnsUnavailable(exc.errno, f"cannot enter network namespace {netns}: {why}")
            return
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed back to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"a call in network namespace {netns} did not finish in {timeout:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def socket_in(netns: str, family: int, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket made inside `netns`: it stays there whatever thread uses it later."""
    return in_netns(netns, socket.socket, family, kind)


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Send `sig`, then SIGKILL if it has not exited within `grace` seconds; nothing if already gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
