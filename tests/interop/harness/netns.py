"""Network namespaces joined by veth pairs, for interop tests on the host kernel.

Built on the product's primitives (`ipsec_mesh_operator.netns`). Every name carries the
pytest process id so parallel runs never collide, and a ``Topology`` removes its namespaces
(and kills the processes it started in them) when closed, whatever happened in the test.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ipsec_mesh_operator import netns as primitives
from ipsec_mesh_operator.netns import NetnsError, stop_process

__all__ = ["NAME_PREFIX", "NatTopology", "Namespace", "Pair", "Topology", "netns_supported", "remove_stale_namespaces"]

NAME_PREFIX = "ipsecmesh"


def netns_supported() -> str | None:
    """None when namespaces can be created here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_SYS_ADMIN"
    probe = primitives.unique_name(NAME_PREFIX) + "-probe"  # removable as stale like the rest
    try:
        primitives.add_netns(probe)
        primitives.run("ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up", timeout=15)
    except (OSError, NetnsError, ValueError) as exc:
        return f"'ip netns' does not work here: {exc}"
    finally:
        primitives.delete_netns(probe)
    return None


def remove_stale_namespaces() -> None:
    """Delete namespaces left by earlier runs whose pytest process is gone."""
    primitives.remove_stale_namespaces(NAME_PREFIX)


@dataclass
class Namespace:
    """One network namespace; commands run in it through ``ip netns exec``."""

    name: str
    role: str
    addrs: dict[str, str] = field(default_factory=dict)  # "ipv4"/"ipv6" -> address
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def ipv4(self) -> str:
        return self.addrs["ipv4"]

    @property
    def ipv6(self) -> str:
        return self.addrs["ipv6"]

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, cmd: Sequence[str] | str, check: bool = True, timeout: float = 30.0,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command (argv list, or a string for ``sh -c``) and wait for it."""
        try:
            return primitives.run(*self._argv(cmd), check=check, timeout=timeout, input=input)
        except NetnsError as exc:
            raise NetnsError(f"[{self.role}] {exc}") from None

    def popen(self, cmd: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen:
        """Start a command in the namespace; the topology kills it on close."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self._argv(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def python_argv(self, *args: str) -> list[str]:
        """argv running this interpreter in the namespace, e.g. ``("-m", "pkg")``.

        The child gets this process's sys.path as PYTHONPATH, so it imports the code
        under test (the worktree), not the venv's editable install of another checkout.
        """
        path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        return self.exec_prefix() + ["env", f"PYTHONPATH={path}", sys.executable, *args]

    def call(self, func: Callable[..., Any], *args: Any, timeout: float = 30.0,
             **kwargs: Any) -> Any:
        """Run a picklable-result callable in a forked child inside the namespace."""
        return primitives.call_in_child(self.name, func, *args, timeout=timeout, **kwargs)

    def pids(self) -> list[int]:
        return primitives.netns_pids(self.name)

    def kill_processes(self) -> None:
        """Stop what we started here: our Popen children, then anything still inside."""
        for proc in self._procs:
            stop_process(proc, signal.SIGKILL)
        primitives.kill_netns_processes(self.name)  # only processes living in our own namespace

    def _argv(self, cmd: Sequence[str] | str) -> list[str]:
        if isinstance(cmd, str):
            return self.exec_prefix() + ["sh", "-c", cmd]
        return self.exec_prefix() + list(cmd)


@dataclass
class Pair:
    left: Namespace
    right: Namespace


@dataclass
class NatTopology:
    """``left`` sits behind ``router``, which masquerades towards ``right``."""

    left: Namespace
    router: Namespace
    right: Namespace


class Topology:
    """Owns namespaces for one test; use as a context manager or call close()."""

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []
        self._id = primitives.unique_name(NAME_PREFIX)

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, role: str) -> Namespace:
        ns = Namespace(primitives.add_netns(f"{self._id}-{role}"), role)
        self.namespaces.append(ns)
        # No IPv6 DAD delay: addresses must be usable the moment tests start.
        ns.run(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0"])
        return ns

    def link(self, a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
        """A veth pair, created straight into both namespaces (no host-side names)."""
        primitives.add_veth(a.name, a_if, b.name, b_if)

    @staticmethod
    def address(ns: Namespace, ifname: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []
        ns.run(["ip", "addr", "add", cidr, "dev", ifname, *extra])
        ns.addrs.setdefault("ipv6" if ":" in cidr else "ipv4", cidr.split("/")[0])

    def pair(self, ipv6: bool = True) -> Pair:
        """Two namespaces on one link: left 10.0.0.1 / fd00::1, right .2 / ::2."""
        left, right = self.namespace("left"), self.namespace("right")
        self.link(left, "eth0", right, "eth0")
        for host, ns in ((1, left), (2, right)):
            self.address(ns, "eth0", f"10.0.0.{host}/24")
            if ipv6:
                self.address(ns, "eth0", f"fd00::{host}/64")
        return Pair(left, right)

    def nat(self, ipv6: bool = False) -> NatTopology:
        """left (192.168.1.2) -> router (masquerade) -> right (203.0.113.2).

        With ipv6, the same with fd01::/64 behind fd02::/64 and NAT66 masquerade.
        """
        left, router, right = (self.namespace(r) for r in ("left", "router", "right"))
        self.link(left, "eth0", router, "inside")
        self.link(router, "outside", right, "eth0")
        self.address(left, "eth0", "192.168.1.2/24")
        self.address(router, "inside", "192.168.1.1/24")
        self.address(router, "outside", "203.0.113.1/24")
        self.address(right, "eth0", "203.0.113.2/24")
        left.run(["ip", "route", "add", "default", "via", "192.168.1.1"])
        router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if ipv6:
            self.address(left, "eth0", "fd01::2/64")
            self.address(router, "inside", "fd01::1/64")
            self.address(router, "outside", "fd02::1/64")
            self.address(right, "eth0", "fd02::2/64")
            left.run(["ip", "-6", "route", "add", "default", "via", "fd01::1"])
            router.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        ruleset = ("table inet nat {\n"
                   " chain postrouting {\n"
                   "  type nat hook postrouting priority srcnat; policy accept;\n"
                   '  oifname "outside" masquerade\n'
                   " }\n}\n")
        router.run(["nft", "-f", "-"], input=ruleset)
        return NatTopology(left, router, right)

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            ns.kill_processes()
        deadline = time.monotonic() + 10
        for ns in reversed(self.namespaces):
            primitives.delete_netns(ns.name, retry_for=max(0.0, deadline - time.monotonic()))
        self.namespaces.clear()
