"""Network namespaces on this node (root only): making and deleting them, veth pairs,
commands and Python calls inside them, and stopping the processes we started there.

The one copy of these primitives (issue 12): the standalone tools use it where they do
what `kubectl exec` does in a cluster (reading a sidecar's local /status), the demo builds
its pods with it, and the host, interop and deploy test trees build their topologies on it.
The VM guest's helpers run inside the VM, where this package is not installed, and keep
their own copy (tests/vm/netns_guest.py).

`setns(2)` changes the calling thread's namespace only, so `in_netns` runs a call in a
helper thread that enters the namespace and ends; `call_in_child` runs it in a forked
child instead, which can be killed when it overruns (a thread cannot).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable

from pyroute2 import netns as pyroute2_netns

#: A name under /run/netns as `ip netns add` makes them; never a path (no "/", not "." or "..").
NETNS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
#: The kernel's limit on an interface name (IFNAMSIZ less the terminating NUL).
IFNAME_MAX = 15

_sequence = itertools.count(1)


class NetnsUnavailable(OSError):
    """The namespace cannot be entered here: it does not exist on this node, or we are not root."""


class NetnsError(RuntimeError):
    """A namespace command failed or did not finish in time; the message carries its stderr."""


def unique_name(tag: str, limit: int = 63) -> str:
    """`tag-<pid>-<n>`: no other process (each carries its pid) nor call (n counts) gets it.
    ValueError when longer than `limit` (IFNAME_MAX for an interface)."""
    name = f"{tag}-{os.getpid()}-{next(_sequence)}"
    if len(name) > limit:
        raise ValueError(f"{name!r} is longer than {limit} characters")
    return name


def run(*argv: str, check: bool = True, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (text in and out), bounded by `timeout`; NetnsError if it fails (when `check`) or overruns."""
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(argv)} did not finish in {timeout:g} s") from None
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} -> {done.returncode}: {done.stderr.strip()}")
    return done


def ip(*args: str, netns: str | None = None, check: bool = True, timeout: float = 60) -> str:
    """`ip [-n netns] args...`; its output."""
    return run("ip", *(["-n", netns] if netns else []), *args, check=check, timeout=timeout).stdout


def add_netns(name: str) -> str:
    """Make namespace `name` with its loopback up; NetnsError if it already exists (never shared by accident)."""
    ip("netns", "add", check_netns_name(name))
    try:
        ip("link", "set", "lo", "up", netns=name)
    except NetnsError:
        delete_netns(name)
        raise
    return name


def delete_netns(name: str, retry_for: float = 0.0) -> bool:
    """Delete namespace `name`, retrying for `retry_for` seconds while the kernel refuses (busy);
    True once it is gone (including when it never existed)."""
    deadline = time.monotonic() + retry_for
    while True:
        if run("ip", "netns", "del", check_netns_name(name), check=False, timeout=15).returncode == 0:
            return True
        if not os.path.exists(f"/run/netns/{name}"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def add_veth(netns: str, ifname: str, peer_netns: str, peer_ifname: str, up: bool = True) -> None:
    """A veth pair made straight into both namespaces (never a name in the host's), both ends up unless `up` is false."""
    ip("link", "add", ifname, "type", "veth", "peer", "name", peer_ifname, "netns", peer_netns, netns=netns)
    if up:
        ip("link", "set", ifname, "up", netns=netns)
        ip("link", "set", peer_ifname, "up", netns=peer_netns)


def netns_pids(name: str) -> list[int]:
    """The processes living in namespace `name` (none when it does not exist)."""
    out = run("ip", "netns", "pids", check_netns_name(name), check=False, timeout=15).stdout
    return [int(pid) for pid in out.split() if pid.isdigit()]


def kill_netns_processes(name: str) -> None:
    """SIGKILL everything still inside namespace `name` (only processes in a namespace we made)."""
    for pid in netns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_stale_namespaces(tag: str) -> list[str]:
    """Delete namespaces `unique_name(tag)` made in processes that are gone; their names."""
    pattern = re.compile(rf"({re.escape(tag)}-(\d+)-\S+)")
    removed = []
    for line in run("ip", "netns", "list", check=False, timeout=15).stdout.splitlines():
        match = pattern.match(line)
        if match and not os.path.exists(f"/proc/{match.group(2)}") and delete_netns(match.group(1)):
            removed.append(match.group(1))
    return removed


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
            enter_netns(netns)
        except NetnsUnavailable as exc:
            outcome["error"] = exc
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


def enter_netns(netns: str) -> None:
    """Move the calling thread into `netns` for the rest of its life; NetnsUnavailable if it cannot."""
    try:
        pyroute2_netns.setns(netns, flags=0)  # flags=0: never create one
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise NetnsUnavailable(exc.errno, f"cannot enter network namespace {netns}: {why}") from None


def _child(netns: str, function: Callable[..., Any], args: tuple, kwargs: dict, conn: Any) -> None:
    try:
        enter_netns(netns)
        conn.send((True, function(*args, **kwargs)))
    except BaseException as exc:  # every failure goes back to the parent
        conn.send((False, exc))
    finally:
        conn.close()


def call_in_child(netns: str, function: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
    """Call `function(*args, **kwargs)` in a forked child inside `netns`; its (picklable) result or
    exception. TimeoutError if it has not finished within `timeout` seconds; the child is then killed."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe(duplex=False)
    worker = context.Process(target=_child, args=(netns, function, args, kwargs, child), daemon=True)
    worker.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"{function!r} in network namespace {netns} did not finish in {timeout:g} s")
        ok, value = parent.recv()
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join(5)
        parent.close()
    if not ok:
        raise value
    return value


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
