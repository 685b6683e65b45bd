"""The one netns/process helper module (ipsec_mesh_operator.netns) that the demo, the host
tests and the interop harness share (issue 12)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ipsec_mesh_operator import netns
from tests.support.netns import A4, make_pair, missing_prerequisite

pytestmark = pytest.mark.skipif(bool(missing_prerequisite()), reason=missing_prerequisite() or "")


def test_a_socket_made_in_a_namespace_binds_to_that_namespace_s_address():
    pair = make_pair("nsmod")
    try:
        with netns.socket_in(pair.a, socket.AF_INET) as inside:
            inside.bind((A4, 0))  # A4 exists only inside pair.a
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside, pytest.raises(OSError):
            outside.bind((A4, 0))
    finally:
        pair.close()


def _python(code: str) -> subprocess.Popen:
    # The child says "ready" once its signal disposition is set, so the test never races it.
    proc = subprocess.Popen([sys.executable, "-c", code + "\nprint('ready', flush=True)\nimport time\ntime.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_stop_process_asks_first_and_kills_only_what_does_not_listen():
    polite = _python("")
    netns.stop_process(polite)
    assert polite.returncode == -signal.SIGTERM
    deaf = _python("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)")
    netns.stop_process(deaf, grace=0.5)
    assert deaf.returncode == -signal.SIGKILL
    netns.stop_process(deaf)  # already gone: nothing to do
    netns.stop_process(None)


def test_unique_names_carry_the_pid_never_repeat_and_respect_the_length_limit():
    names = {netns.unique_name("nsmod") for _ in range(50)}
    assert len(names) == 50 and all(f"-{os.getpid()}-" in name for name in names)
    assert all(netns.NETNS_NAME.fullmatch(name) for name in names)
    with pytest.raises(ValueError):
        netns.unique_name("a-tag-too-long-for-an-interface", limit=netns.IFNAME_MAX)


def test_a_failed_command_is_a_netns_error_with_the_command_s_own_words():
    with pytest.raises(netns.NetnsError, match="nosuchns"):
        netns.ip("link", "show", netns=f"nosuchns{os.getpid()}")
    assert netns.run("ip", "-n", f"nosuchns{os.getpid()}", "link", check=False).returncode != 0
    with pytest.raises(netns.NetnsError, match="did not finish"):
        netns.run("sleep", "5", timeout=0.2)


def test_names_that_are_paths_are_refused_before_anything_runs():
    with pytest.raises(ValueError):
        netns.add_netns("../../proc/1/ns/net")
    with pytest.raises(ValueError):
        netns.delete_netns("a/b")


def test_a_namespace_is_made_with_loopback_up_and_is_gone_after_delete():
    name = netns.unique_name("nsmod")
    netns.add_netns(name)
    try:
        assert "UP" in netns.ip("-o", "link", "show", "lo", netns=name).split("<", 1)[1].split(">")[0].split(",")
        with pytest.raises(netns.NetnsError):  # already there: never silently shared with another test
            netns.add_netns(name)
    finally:
        assert netns.delete_netns(name)
    assert name not in netns.ip("netns", "list")
    assert netns.delete_netns(name)  # nothing to delete is not a failure


def test_a_veth_pair_joins_two_namespaces_and_a_child_process_call_runs_inside():
    a, b = netns.unique_name("nsmod"), netns.unique_name("nsmod")
    for name in (a, b):
        netns.add_netns(name)
    try:
        netns.add_veth(a, "eth0", b, "eth1")
        netns.ip("addr", "add", "10.98.0.1/24", "dev", "eth0", netns=a)
        netns.ip("addr", "add", "10.98.0.2/24", "dev", "eth1", netns=b)
        assert ",UP" in netns.ip("-o", "link", "show", "eth1", netns=b)  # brought up by add_veth
        assert netns.call_in_child(b, _addresses) == ["10.98.0.2"]  # eth1 exists only in b
        assert netns.run("ip", "netns", "exec", a, "ping", "-c1", "-W5", "10.98.0.2").returncode == 0
        sleeper = subprocess.Popen(["ip", "netns", "exec", a, "sleep", "60"])
        try:
            for _ in range(100):  # bounded: `ip netns exec` enters the namespace before exec'ing sleep
                if netns.netns_pids(a):
                    break
                time.sleep(0.05)
            assert sleeper.pid in netns.netns_pids(a)
            netns.kill_netns_processes(a)
            assert sleeper.wait(5) == -signal.SIGKILL
        finally:
            netns.stop_process(sleeper, signal.SIGKILL)
        with pytest.raises(ZeroDivisionError):  # the child's exception, raised here
            netns.call_in_child(a, _divide, 0)
        with pytest.raises(netns.NetnsUnavailable):
            netns.call_in_child(f"nosuchns{os.getpid()}", _addresses)
    finally:
        for name in (a, b):
            netns.delete_netns(name)


def test_a_child_process_call_that_overruns_is_killed_and_the_namespace_empties():
    name = netns.unique_name("nsmod")
    netns.add_netns(name)
    try:
        with pytest.raises(TimeoutError):
            netns.call_in_child(name, time.sleep, 30, timeout=0.5)
        assert netns.netns_pids(name) == []  # the child was killed, not left sleeping in there
    finally:
        netns.delete_netns(name)


def _addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "eth1"], capture_output=True, text=True).stdout
    return [field.split("/")[0] for line in out.splitlines() for field in line.split() if "/" in field]


def _divide(x: int) -> float:
    return 1 / x
