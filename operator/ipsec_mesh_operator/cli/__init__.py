"""Read-only commands (`ipsec-mesh explain`, `peerings`): facts from a cluster or a standalone operator, and what they mean."""
