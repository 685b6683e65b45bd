"""The sidecar's own setns (ipsec_mesh.xfrm.netns): names, paths and fds, and refusals."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

from ipsec_mesh.xfrm.channel import open_netlink_socket
from ipsec_mesh.xfrm.errors import XfrmError
from ipsec_mesh.xfrm.netns import netns_path, setns
from tests.support.netns import A4, make_pair, missing_prerequisite

pytestmark = pytest.mark.skipif(bool(missing_prerequisite()), reason=missing_prerequisite() or "")


def _in_thread(function):
    """Run `function` on a throw-away thread (setns moves that thread only); its result or error."""
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(_call(function)))
    thread.start()
    thread.join(30)
    return outcome[0]


def _call(function):
    try:
        return function()
    except Exception as exc:
        return exc


def _binds_a4(netns) -> bool:
    setns(netns)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inside:
        inside.bind((A4, 0))  # A4 exists only inside the pair's namespace a
    return True


def test_setns_enters_a_namespace_by_name_path_and_fd_and_only_on_the_calling_thread():
    pair = make_pair("setns")
    try:
        assert netns_path(pair.a) == f"/var/run/netns/{pair.a}"
        assert _in_thread(lambda: _binds_a4(pair.a)) is True
        assert _in_thread(lambda: _binds_a4(f"/var/run/netns/{pair.a}")) is True
        fd = os.open(netns_path(pair.a), os.O_RDONLY)
        try:
            assert _in_thread(lambda: _binds_a4(fd)) is True
            os.fstat(fd)  # a caller's fd stays open
        finally:
            os.close(fd)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as here, pytest.raises(OSError):
            here.bind((A4, 0))  # this thread never moved
    finally:
        pair.close()


def test_setns_refuses_a_missing_namespace_and_what_is_not_a_network_namespace():
    missing = _in_thread(lambda: setns(f"nosuchns{os.getpid()}"))
    assert isinstance(missing, OSError) and missing.errno == errno.ENOENT
    not_netns = _in_thread(lambda: setns("/proc/self/ns/uts"))
    assert isinstance(not_netns, OSError) and not_netns.errno == errno.EINVAL
    with pytest.raises(XfrmError, match="cannot enter network namespace") as caught:
        open_netlink_socket(f"nosuchns{os.getpid()}")
    assert caught.value.errno == errno.ENOENT
