"""An operator runtime with the real HTTPS servers but no Kubernetes: for API and webhook tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.controller.kube import Connection, KubeClient
from ipsec_mesh_operator.controller.runtime import OperatorRuntime
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.pki.ca import CertificateAuthority
from ipsec_mesh_operator.server.admission import make_webhook_app
from ipsec_mesh_operator.server.servers import Servers
from tests.support import fake_tokens


class _Request:
    def __init__(self, data: Any):
        self.data = data


@contextlib.asynccontextmanager
async def running_servers(pods: list[PodInfo] = (), **overrides: Any) -> AsyncIterator[tuple[OperatorRuntime, Servers]]:
    config = OperatorConfig(api_host="127.0.0.1", api_port=0, webhook_port=0, metrics_port=0,
                            extra_server_names=("localhost", "127.0.0.1"), **overrides)
    runtime = OperatorRuntime(config, KubeClient(Connection(server="http://127.0.0.1:9")))

    async def review(body: dict[str, Any]) -> dict[str, Any]:
        return fake_tokens.review(_Request(body))

    runtime.authenticator._review = review  # the TokenReview authority of fake_tokens, without HTTP
    runtime.ca = CertificateAuthority.create(time.time(), config.max_cert_lifetime, config.ca_lifetime)
    runtime.index.set_trust_bundle(runtime.ca.trust_bundle(time.time()))
    for pod in pods:
        runtime.index.upsert_pod(pod)
    servers = Servers(runtime, make_webhook_app(runtime))
    await servers.start()
    try:
        yield runtime, servers
    finally:
        await servers.stop()
        await runtime.kube.close()
