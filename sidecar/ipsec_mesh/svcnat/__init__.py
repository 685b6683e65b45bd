"""Pod-local Service translation (nftables DNAT in the pod's own namespace), see docs/services.md.

A ClusterIP is rewritten to an endpoint inside the pod, before the kernel's XFRM lookup,
so the peer's policy (and its IPsec SA) applies to Service calls too.
"""

from .nft import Nft, NftError
from .ruleset import FAMILY, TABLE, Objects, Table, changes, render, usable_endpoints
from .translation import ServiceTranslation

__all__ = ["FAMILY", "TABLE", "Nft", "NftError", "Objects", "ServiceTranslation", "Table", "changes", "render",
           "usable_endpoints"]
