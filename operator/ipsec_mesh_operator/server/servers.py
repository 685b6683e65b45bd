"""The HTTP(S) servers inside the operator process: mesh API, admission webhooks, metrics."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import metrics
from ..controller.federation import bundle_app, endpoint_id
from ..controller.runtime import OperatorRuntime
from ..pki.tls import ServingCertificate
from . import api
from .connections import ConnectionPool, GuardedSite, guard
from .health import Readiness
from .ratelog import QuietServerLogger

logger = logging.getLogger("ipsec_mesh_operator.servers")
#: aiohttp's per-request error lines (malformed requests, aborted connections), without tracebacks.
server_logger = QuietServerLogger(logging.getLogger("ipsec_mesh_operator.http"))


async def _metrics(request: web.Request) -> web.Response:
    metrics.INDEXED_PODS.set(len(list(request.app[api.RUNTIME_KEY].index.pods())))
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


class Servers:
    def __init__(self, runtime: OperatorRuntime, webhook_app: web.Application | None = None,
                 api_routes: Callable[[web.Application], None] | None = None):
        self.runtime = runtime
        #: Adds routes to the mesh API's app (the standalone operator's admin endpoint).
        self.api_routes = api_routes
        self.tls = ServingCertificate(runtime.config.server_names)
        #: The bundle endpoint proves the trust domain's endpoint SPIFFE ID (https_spiffe), with its own certificate.
        self.bundle_tls = ServingCertificate(runtime.config.server_names, endpoint_id(runtime.config.trust_domain)) \
            if runtime.config.bundle_port is not None else None
        self.webhook_app = webhook_app
        self.webhook_context: ssl.SSLContext | None = None
        if runtime.config.webhook_tls_dir:
            self.webhook_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.webhook_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._runners: list[web.AppRunner] = []
        #: /readyz on the metrics port; whoever feeds the index adds its listings.
        self.readiness = Readiness()
        self.ports: dict[str, int] = {}
        self.pools: dict[str, ConnectionPool] = {}
        runtime.ca_listeners.append(self._refresh_certificate)

    def _refresh_certificate(self) -> None:
        for tls in (self.tls, self.bundle_tls):
            if tls is not None and self.runtime.ca is not None and tls.refresh(self.runtime.ca, self.runtime.clock()):
                logger.info("serving certificate (re)issued for %s", ", ".join((*tls.names, tls.uri or "")).rstrip(", "))
        if self.webhook_context is not None:
            # cert-manager renews the files in place; pick up the current pair for new connections.
            directory = Path(self.runtime.config.webhook_tls_dir)
            self.webhook_context.load_cert_chain(directory / "tls.crt", directory / "tls.key")

    async def start(self) -> None:
        self._refresh_certificate()
        config = self.runtime.config
        api_app = api.make_app(self.runtime)
        if self.api_routes is not None:
            self.api_routes(api_app)
        metrics_app = web.Application()
        metrics_app[api.RUNTIME_KEY] = self.runtime
        metrics_app.router.add_get("/metrics", _metrics)
        metrics_app.router.add_get("/healthz", api.healthz)
        metrics_app.router.add_get("/readyz", self.readiness.handle)
        plan = [("api", api_app, config.api_port, self.tls.context), ("metrics", metrics_app, config.metrics_port, None)]
        if self.webhook_app is not None:
            plan.append(("webhook", self.webhook_app, config.webhook_port, self.webhook_context or self.tls.context))
        if self.bundle_tls is not None:
            plan.append(("bundle", bundle_app(self.runtime.published_bundle, config.bundle_refresh_hint),
                         config.bundle_port, self.bundle_tls.context))
        self.readiness.require([name for name, *_ in plan if name != "metrics"], ())
        for name, app, port, ssl_context in plan:
            if ssl_context is None:
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, config.api_host, port)
            else:
                pool = ConnectionPool(name, config.max_connections, ssl_context, config.handshake_timeout,
                                      config.dead_client_timeout)
                guard(app, pool)
                self.pools[name] = pool
                runner = web.AppRunner(app, access_log=None, keepalive_timeout=config.idle_timeout,
                                       logger=server_logger)
                await runner.setup()
                site = GuardedSite(runner, config.api_host, port, pool)
            await site.start()
            self._runners.append(runner)
            self.ports[name] = runner.addresses[0][1]
            self.readiness.listening.add(name)
            logger.info("%s server listening on %s:%d", name, config.api_host, self.ports[name])

    async def stop(self) -> None:
        self.readiness.listening.clear()
        self.runtime.release_watchers()
        for runner in reversed(self._runners):
            await asyncio.shield(runner.cleanup())
        self._runners.clear()
