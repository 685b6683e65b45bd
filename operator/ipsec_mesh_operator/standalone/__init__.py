"""The operator without Kubernetes: pods and peerings from a YAML file, the same mesh API and CA.

For machines without a cluster (the demo, a few VMs, tests): `ipsec-mesh standalone`
runs `StandaloneOperator`, which drives the operator's own `OperatorRuntime` with
a file-backed Secret store and a local token authority. See docs/standalone.md.
"""

from .config import StandaloneConfig, StandaloneConfigError, load_config, parse_config
from .runner import StandaloneOperator
from .tokens import AdminToken, InvalidToken, TokenAuthority

__all__ = [
    "AdminToken", "InvalidToken", "StandaloneConfig", "StandaloneConfigError", "StandaloneOperator",
    "TokenAuthority", "load_config", "parse_config",
]
