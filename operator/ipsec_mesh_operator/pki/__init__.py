"""Keys and certificates: the mesh CA, per-peering PSKs, overlapping generations, the serving certificate."""
