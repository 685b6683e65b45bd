"""Prometheus metrics of the operator (served on the metrics port at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

CERTIFICATES_ISSUED = Counter("ipsec_mesh_certificates_issued", "Leaf certificates signed", registry=REGISTRY)
REQUESTS_REFUSED = Counter(
    "ipsec_mesh_api_requests_refused", "Mesh API requests refused", ["reason"], registry=REGISTRY
)
PEER_MAP_WATCHERS = Gauge("ipsec_mesh_peer_map_watchers", "Sidecars waiting on a peer-map long-poll",
                          registry=REGISTRY)
PEER_MAP_WATCHERS_WOKEN = Counter("ipsec_mesh_peer_map_watchers_woken",
                                  "Peer-map long polls answered because their pod's map changed",
                                  registry=REGISTRY)
PEER_MAP_STREAMS = Gauge("ipsec_mesh_peer_map_streams", "Sidecars holding a streaming peer-map watch",
                         registry=REGISTRY)
PEER_MAP_STREAMS_DROPPED = Counter("ipsec_mesh_peer_map_streams_dropped",
                                   "Streaming watches ended by the operator: unread (the watcher did not read "
                                   "its frames) or unauthenticated (its token or pod no longer valid)",
                                   ["reason"], registry=REGISTRY)
PEER_MAP_UPDATES = Counter("ipsec_mesh_peer_map_updates", "Pod peer maps invalidated by a change",
                           registry=REGISTRY)
INDEXED_PODS = Gauge("ipsec_mesh_indexed_pods", "Injected pods in the mesh index", registry=REGISTRY)
PEERINGS = Gauge("ipsec_mesh_peerings", "IPsecPeerings in the mesh index", registry=REGISTRY)
KEY_ROTATIONS = Counter("ipsec_mesh_key_rotations", "CA and PSK rotations", ["kind"], registry=REGISTRY)
KEYS_REFUSED = Counter("ipsec_mesh_stored_keys_refused",
                       "Stored key material (a Secret another replica wrote) refused as unusable; the keys in use kept",
                       ["kind"], registry=REGISTRY)
KEY_WRITE_CONFLICTS = Counter("ipsec_mesh_key_write_conflicts",
                              "CA or PSK Secret writes refused because someone wrote it since it was read (then re-read)",
                              ["kind"], registry=REGISTRY)
SIGNING_SECONDS = Histogram("ipsec_mesh_signing_seconds", "Time to check and sign one CSR", registry=REGISTRY)
CONNECTIONS = Gauge("ipsec_mesh_server_connections", "Open connections of an HTTPS server", ["server"],
                    registry=REGISTRY)
CONNECTIONS_DROPPED = Counter("ipsec_mesh_server_connections_dropped",
                              "Connections refused (every slot busy) or evicted (longest idle) at the cap",
                              ["server", "reason"], registry=REGISTRY)
