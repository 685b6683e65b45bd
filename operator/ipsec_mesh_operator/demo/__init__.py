"""`ipsec-mesh demo`: a small mesh on one Linux machine, no cluster needed.

Network namespaces stand in for pods on a bridged pod network. The operator runs
standalone (`ipsec-mesh standalone`) in the node's namespace: the real operator
logic with pods and peerings from the demo's YAML instead of the Kubernetes API,
the same mesh CA and the same mesh API over HTTPS. Each pod gets the real sidecar
(`ipsec-mesh-sidecar mesh`), which bootstraps from that API exactly as in a
cluster: its own key, a CSR with the pod's token, then peer maps. Then the demo
sends traffic and shows what a person wants to see: where each certificate came
from, the SAs and algorithms, that only ESP is on the wire between peers, that a
pod outside the peering gets nowhere, and a rekey happening live. Everything it
made is removed at the end, also on Ctrl-C.

Where the running kernel has no ESP, the same demo runs inside a VM (demo/vm.py).
"""

from .runner import main

__all__ = ["main"]
