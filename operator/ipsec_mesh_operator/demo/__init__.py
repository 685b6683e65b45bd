"""`ipsec-mesh demo`: a small mesh on one Linux machine, no cluster needed.

Network namespaces stand in for pods on a bridged pod network; each gets the real
sidecar (`ipsec-mesh-sidecar`, XFRM data plane) with a certificate from a mesh CA
(the operator's CA code) and a peer map computed from the demo's YAML. Then it sends
traffic and shows what a person wants to see: the SAs and algorithms, that only ESP
is on the wire between peers, that a pod outside the peering gets nowhere, and a
rekey happening live. Everything it made is removed at the end, also on Ctrl-C.

Where the running kernel has no ESP, the same demo runs inside a VM (demo/vm.py).
"""

from .runner import main

__all__ = ["main"]
