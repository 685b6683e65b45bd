"""Move the calling thread into a network namespace: setns(2), without pyroute2.netns.

`pyroute2.netns` imports multiprocessing, pickle, platform and ctypes.util (which brings
shutil, tempfile, lzma and bz2): about 1.5 MB of private memory in every sidecar for one
system call. Python 3.12 has `os.setns`; on 3.11 the call goes through the C library the
interpreter is already linked with, and ctypes is imported only when a namespace is
entered (tests, `netns:` in the settings), never by a sidecar running in its pod's own.
"""

from __future__ import annotations

import os

NETNS_RUN_DIR = "/var/run/netns"  # where `ip netns add` names namespaces
CLONE_NEWNET = 0x40000000  # linux/sched.h: the fd must refer to a network namespace


def netns_path(name: str) -> str:
    """`ip netns` names live under /var/run/netns; anything with a directory is a path."""
    return name if os.path.dirname(name) else os.path.join(NETNS_RUN_DIR, name)


def setns(netns: str | int) -> None:
    """Enter `netns` (a name, a path such as /proc/PID/ns/net, or an open fd); OSError if not."""
    if isinstance(netns, int):
        _setns(netns)
        return
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
