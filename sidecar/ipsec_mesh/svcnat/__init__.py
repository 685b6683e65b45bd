"""Pod-local Service translation (nftables DNAT in the pod's own namespace), see docs/services.md.

A ClusterIP is rewritten to an endpoint inside the pod, before the kernel's XFRM lookup,
so the peer's policy (and its IPsec SA) applies to Service calls too.

The names below load their modules on first use: a pod whose peer map lists no Service never
needs them (ondemand.py), and each module costs every such pod memory (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nft import Nft, NftError
    from .ruleset import FAMILY, TABLE, Objects, Table, changes, render, usable_endpoints
    from .translation import ServiceTranslation

_MODULE_OF = {"Nft": "nft", "NftError": "nft", "FAMILY": "ruleset", "TABLE": "ruleset", "Objects": "ruleset",
              "Table": "ruleset", "changes": "ruleset", "render": "ruleset", "usable_endpoints": "ruleset",
              "ServiceTranslation": "translation"}

__all__ = ["FAMILY", "TABLE", "Nft", "NftError", "Objects", "ServiceTranslation", "Table", "changes", "render",
           "usable_endpoints"]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
