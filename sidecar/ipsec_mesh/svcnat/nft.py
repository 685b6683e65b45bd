"""libnftables in one network namespace, through the netfilter project's Python binding.

`nftables.Nftables` (Debian's python3-nftables, a thin ctypes layer over libnftables1)
parses nft syntax and sends a whole script as one netlink batch, which the kernel
commits or refuses as a unit. libnftables opens its netlink socket in the namespace of
the thread that calls it, so a sidecar driving another namespace (tests, `netns:` in
the settings) runs every call on one worker thread that entered that namespace first.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

from ..xfrm.netns import setns
from .mtu import route_mtu
from .ruleset import FAMILY, TABLE, UNTRANSLATED_COUNTER, Key, Objects, lookup_key

_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


class NftError(Exception):
    """libnftables is missing, or refused a command (the kernel's message included)."""


def _enter(netns: str) -> None:
    setns(netns)  # never creates a namespace: a missing one is an error


class Nft:
    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._executor = ThreadPoolExecutor(1, "nft-setns", _enter, (netns,)) if netns is not None else None
        self._nft = self._call(self._load)

    @staticmethod
    def _load():
        try:
            import nftables
        except ImportError as exc:
            raise NftError(f"the nftables Python binding is not installed: {exc}") from None
        try:
            nft = nftables.Nftables()
        except OSError as exc:
            raise NftError(f"libnftables cannot be loaded: {exc}") from None
        nft.set_json_output(False)
        return nft

    def _call(self, function, *args):
        if self._executor is None:
            return function(*args)
        try:
            return self._executor.submit(function, *args).result()
        except NftError:
            raise
        except Exception as exc:  # setns failed in the worker (BrokenThreadPool carries no errno)
            raise NftError(f"cannot work in network namespace {self.netns!r}: {exc!r}") from None

    def run(self, script: str) -> str:
        """Run a script as one transaction; NftError with libnftables' message if refused."""
        rc, output, error = self._call(self._nft.cmd, script)
        if rc != 0:
            raise NftError(error.strip() or f"nft failed (rc {rc})")
        return output

    def route_mtus(self, addresses) -> dict:
        """address -> the MTU of its route in this namespace (None: no route); see mtu.route_mtu."""
        return self._call(lambda: {address: route_mtu(address) for address in addresses})

    def _json(self, command: str):
        rc, output, error = self._call(self._nft.json_cmd, {"nftables": [{"list": command}]})
        if rc != 0:
            raise NftError(error.strip() or f"nft failed (rc {rc})")
        return output.get("nftables", []) if isinstance(output, dict) else []

    def objects(self) -> Objects | None:
        """The translation's chains, sets and lookup elements in the kernel now; None: no table."""
        try:
            items = self._json({"table": {"family": FAMILY, "name": TABLE}})
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        chains = {item["chain"]["name"] for item in items if "chain" in item}
        sets = {item["set"]["name"]: item["set"] for item in items if "set" in item}
        maps = {item["map"]["name"]: item["map"] for item in items if "map" in item}
        elements: dict[Key, str] = {}
        ports: set[Key] = set()
        for v in (4, 6):
            for element in maps.get(f"svc{v}", {}).get("elem", ()):
                key, verdict = element
                target = verdict.get("goto", {}).get("target", "") if isinstance(verdict, dict) else ""
                elements[_key(key)] = target  # "" (not ours): differs from every wanted chain, so replaced
            ports.update(_key(key) for key in sets.get(f"ports{v}", {}).get("elem", ()))
        return Objects(frozenset(c for c in chains if c.startswith(("svc_", "ep_"))),
                       frozenset(s for s in sets if s.startswith("aff_")), elements, frozenset(ports))

    def untranslated_packets(self) -> int | None:
        try:
            items = self._json({"counter": {"family": FAMILY, "table": TABLE, "name": UNTRANSLATED_COUNTER}})
        except NftError:
            return None
        for item in items:
            if "counter" in item:
                return int(item["counter"].get("packets", 0))
        return None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _key(element) -> Key:
    """A lookup key as libnftables' JSON lists it: {"concat": [address, protocol, port]}."""
    try:
        address, protocol, port = element["concat"]
        return lookup_key(ipaddress.ip_address(address), _PROTOCOLS.get(protocol, str(protocol)), int(port))
    except (KeyError, TypeError, ValueError) as exc:
        raise NftError(f"unexpected element in the table: {element!r}") from exc
