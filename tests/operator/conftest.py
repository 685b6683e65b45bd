"""Operator tests: the environment the handlers module reads when it is first imported.

kopf takes timer intervals at decoration time, so this must be in place before
any test module imports ipsec_mesh_operator.handlers.
"""

import os

os.environ.update({
    "IPSEC_MESH_NAMESPACE": "mesh-system",
    "IPSEC_MESH_API_HOST": "127.0.0.1",
    "IPSEC_MESH_API_PORT": "0",
    "IPSEC_MESH_WEBHOOK_PORT": "0",
    "IPSEC_MESH_METRICS_PORT": "0",
    "IPSEC_MESH_EXTRA_SERVER_NAMES": "localhost,127.0.0.1",
    "IPSEC_MESH_KEY_CHECK_INTERVAL": "1s",
    # kmock 0.8 cannot parse /api/v1/namespaces (it takes "namespaces" for a namespace prefix).
    "IPSEC_MESH_WATCH_NAMESPACES": "false",
})
