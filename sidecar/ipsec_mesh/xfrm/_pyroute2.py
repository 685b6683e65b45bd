"""pyroute2's netlink message classes without its package initialiser.

`import pyroute2.netlink` first runs `pyroute2/__init__.py`, which imports every API
pyroute2 has (IPRoute, NDB, IPDB, nl80211, WireGuard, ...): about 10 MB of resident
memory, in a sidecar that lives in every pod and needs seven of those modules. Before
anything imports pyroute2, `defer_package_init()` registers `pyroute2` as a package
whose submodules import as usual and whose own initialiser runs only when something
asks the package for a name that is not a submodule (`pyroute2.IPRoute` elsewhere in
the same process keeps working).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

PACKAGE = "pyroute2"


class _DeferredPackage(types.ModuleType):
    _deferred_init: str

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            # `from pyroute2 import netns` asks for the attribute before importing the submodule.
            return importlib.import_module(f"{PACKAGE}.{name}")
        self._run_init()
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}") from None

    def _run_init(self) -> None:
        origin = self.__dict__.pop("_deferred_init", None)
        if origin is None:
            return
        with open(origin, "rb") as source:
            exec(compile(source.read(), origin, "exec"), self.__dict__)


def defer_package_init() -> None:
    """Register the deferred package, unless pyroute2 is imported already (or missing)."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        return  # the ordinary import then reports what is wrong
    package = _DeferredPackage(PACKAGE)
    package.__spec__ = spec
    package.__loader__ = spec.loader
    package.__file__ = spec.origin
    package.__path__ = list(spec.submodule_search_locations)
    package.__package__ = PACKAGE
    package._deferred_init = spec.origin
    sys.modules[PACKAGE] = package
