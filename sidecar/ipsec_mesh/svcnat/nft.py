"""libnftables in one network namespace, through the netfilter project's Python binding.

`nftables.Nftables` (Debian's python3-nftables, a thin ctypes layer over libnftables1)
parses nft syntax and sends a whole script as one netlink batch, which the kernel
commits or refuses as a unit. libnftables opens its netlink socket in the namespace of
the thread that calls it, so a sidecar driving another namespace (tests, `netns:` in
the settings) runs every call on one worker thread that entered that namespace first.
"""

from __future__ import annotations

import ipaddress
import time

from ..xfrm.netns import setns
from .mtu import route_mtus
from .routes import RT_PROTO
from .routewatch import RouteWatch
from .ruleset import BASE_CHAINS, ELEMENT_SETS, FAMILY, OFFLOAD_SET, TABLE, UNTRANSLATED_COUNTER, Objects

MTU_MAX_AGE = 60.0  # seconds a route MTU read is trusted without a route notification


class NftError(Exception):
    """libnftables is missing, or refused a command (the kernel's message included)."""


def _enter(netns: str) -> None:
    setns(netns)  # never creates a namespace: a missing one is an error


class Nft:
    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._executor = None
        if netns is not None:  # imported here: a pod's sidecar works in its own namespace and needs no worker
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(1, "nft-setns", _enter, (netns,))
        self._routes: RouteWatch | None = None
        self._mtus: dict = {}
        self._mtus_since = 0.0
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
        """address -> the MTU of its route in this namespace (None: no route); see mtu.route_mtus.

        Kept from one call to the next until the namespace's routes, links or addresses change
        (or MTU_MAX_AGE passes, for path MTUs learned from ICMP, which send no notification), so
        an update reads only the addresses it has not read before.
        """
        return self._call(self._route_mtus, frozenset(addresses))

    def _route_mtus(self, addresses: frozenset) -> dict:
        now = time.monotonic()
        if self._routes is None:
            # Subscribed before the first read: no change is missed. Our ClusterIP routes are no change.
            self._routes = RouteWatch(ignore_protocol=RT_PROTO)
        if self._routes.changed() or now - self._mtus_since > MTU_MAX_AGE:
            self._mtus, self._mtus_since = {}, now
        known = {address: self._mtus[address] for address in addresses if address in self._mtus}
        # Only the addresses asked for are kept: bounded by the map.
        self._mtus = known | route_mtus(address for address in addresses if address not in known)
        return dict(self._mtus)

    def run_json(self, commands: list) -> list:
        """Run libnftables JSON commands as one transaction (values need no quoting); what it lists."""
        rc, output, error = self._call(self._nft.json_cmd, {"nftables": commands})
        if rc != 0:
            raise NftError(error.strip() or f"nft failed (rc {rc})")
        return output.get("nftables", []) if isinstance(output, dict) else []

    def _json(self, command):
        return self.run_json([{"list": command}])

    def objects(self) -> Objects | None:
        """The translation's chains, sets and elements in the kernel now; None: no table.

        Chains are listed without their rules (our chains are named after them; reading rules
        back also makes libnftables warn about every `dnat ... map`), the sets and maps tersely
        (names and timeouts: listing every affinity map's elements took seconds with 2000 of
        them), then the elements of the header's sets one by one.
        """
        ours = lambda items: [item for item in items  # noqa: E731
                              if isinstance(item, dict) and next(iter(item.values()), {}).get("table") == TABLE]
        names = {item["chain"]["name"] for item in ours(self._json({"chains": {"family": FAMILY}}))}
        if not names:
            return None
        self._call(self._nft.set_terse_output, True)
        try:
            listed = {}
            for plural, kind in (("sets", "set"), ("maps", "map")):
                listed.update((item[kind]["name"], item[kind]) for item in ours(self._json({plural: {"family": FAMILY}}))
                              if kind in item)
        finally:
            self._call(self._nft.set_terse_output, False)
        elements = {}
        for name in ELEMENT_SETS:
            kind = "set" if name.startswith(("live", "ports")) else "map"
            items = self._json({kind: {"family": FAMILY, "table": TABLE, "name": name}}) if name in listed else []
            listing = next((item[kind] for item in items if kind in item), {})
            elements[name] = dict(_element(element) for element in listing.get("elem", ()))
        sets = {name: listed[name].get("timeout") for name in listed if name not in ELEMENT_SETS + (OFFLOAD_SET,)}
        return Objects(frozenset(names - set(BASE_CHAINS)), sets, elements)

    def lookup_elements(self) -> dict[str, dict[str, str]]:
        """The lookup maps' elements in the kernel now (svc4, svc6: key -> verdict); empty: no table."""
        elements = {}
        for name in ("svc4", "svc6"):
            try:
                items = self._json({"map": {"family": FAMILY, "table": TABLE, "name": name}})
            except NftError as exc:
                if "No such file or directory" in str(exc):
                    return {}
                raise
            listed = next((item["map"] for item in items if "map" in item), {})
            elements[name] = dict(_element(element) for element in listed.get("elem", ()))
        return elements

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
        if self._routes is not None:
            self._call(self._routes.close)
            self._routes = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _element(element) -> tuple[str, str]:
    """An element as libnftables' JSON lists it, in the syntax `ruleset` writes: (key, data or "")."""
    try:
        if isinstance(element, list):
            key, data = element
            return _text(key), _text(data)
        return _text(element), ""
    except (KeyError, TypeError, ValueError) as exc:
        raise NftError(f"unexpected element in the table: {element!r}") from exc


def _text(value) -> str:
    if isinstance(value, dict) and "elem" in value:
        return _text(value["elem"]["val"])
    if isinstance(value, dict) and "concat" in value:
        return " . ".join(_text(part) for part in value["concat"])
    if isinstance(value, dict):
        (verdict, target), = value.items()  # {"goto": {"target": name}}
        return f"{verdict} {target['target']}"
    if isinstance(value, int):
        return str(value)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return str(value)  # a protocol: libnftables names tcp, udp and sctp
