"""The standalone operator: the real operator logic over a YAML file and a state directory.

It does what the kopf startup and handlers do in a cluster (load or create the
mesh CA and PSKs through OperatorRuntime, feed the mesh index, rotate keys on
schedule, serve the mesh API over HTTPS), with pods and peerings read from
the YAML instead of the API server, Secrets in files, and a local token
authority in place of TokenReview. SIGHUP re-reads the YAML and applies only
the differences. Files it writes under the state directory:

    secrets/<namespace>/<name>.json   mesh CA and PSK Secrets (0600)
    token-signing.key                 the token authority's HMAC key (0600)
    pods.json                         each pod's uid, one per incarnation (0600): see PodIncarnations
    admin-token                       bearer token of /v1/admin/overview (0600)
    pods/<namespace>/<pod>/token      each pod's token, renewed at half its lifetime (0600)
    ca-bundle.pem                     the mesh trust bundle (what sidecars trust for the API)
    api-url                           https://<listen>, written once the API serves, removed at stop
    bundle-url                        the bundle endpoint's URL (with bundleEndpoint), same lifetime
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509

from ipsec_mesh.meshapi import AuthKind, IssuedCertificate

from ..controller.federation import BUNDLE_PATH
from ..controller.index import PodInfo, PodKey
from ..controller.runtime import OperatorRuntime
from ..controller.token_review import Caller, TokenAuthenticator
from ..model.peering import KIND, PeeringSpec
from ..model.settings import OperatorConfig
from ..pki.psk import secret_name
from ..server.servers import Servers
from .admin import add_admin_routes, overview
from .config import StandaloneConfig, StandaloneConfigError, load_config
from .store import FileSecretStore, PodIncarnations, write_private
from .tokens import AdminToken, TokenAuthority, load_or_create_key

logger = logging.getLogger("ipsec_mesh_operator.standalone")

DEFAULT_TOKEN_LIFETIME = 3600.0


class StandaloneRuntime(OperatorRuntime):
    """OperatorRuntime that also remembers which certificate it issued to which pod (for the overview)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.issued: dict[PodKey, dict[str, Any]] = {}

    def sign(self, caller: Caller, csr_pem: bytes) -> IssuedCertificate:
        issued = super().sign(caller, csr_pem)
        cert = x509.load_pem_x509_certificate(issued.certificate.encode())
        issuer = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        self.issued[(caller.namespace, caller.pod)] = {
            "serial": f"{cert.serial_number:x}", "issuedAt": int(self.clock()), "notAfter": issued.not_after,
            "issuer": str(issuer[0].value) if issuer else cert.issuer.rfc4514_string(),
        }
        return issued

    def remove_pod(self, pod: PodKey) -> None:
        super().remove_pod(pod)
        self.issued.pop(pod, None)


def _owner(spec: PeeringSpec) -> dict[str, Any]:
    # No API object owns the PSK Secret here; record which peering it belongs to, as Kubernetes would.
    return {"apiVersion": "ipsec-mesh.io/v1alpha1", "kind": KIND, "name": spec.name, "uid": "standalone"}


class StandaloneOperator:
    def __init__(self, config_path: str | Path, state_dir: str | Path, host: str, port: int, *,
                 metrics_port: int = 0, token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
                 base_config: OperatorConfig | None = None, clock: Callable[[], float] = time.time):
        self.config_path = Path(config_path)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.incarnations = PodIncarnations(self.state_dir / "pods.json")
        self.mesh = self._with_uids(load_config(self.config_path))
        self.config = replace(base_config or OperatorConfig.from_env(), trust_domain=self.mesh.trust_domain,
                              api_host=host, api_port=port, metrics_port=metrics_port,
                              extra_server_names=(host,), webhook_configs=(), bundle_port=self.mesh.bundle_port)
        self.token_lifetime = token_lifetime
        self.store = FileSecretStore(self.state_dir, self.mesh.config_maps)
        self.runtime = StandaloneRuntime(self.config, self.store, clock)
        self.authority = TokenAuthority(load_or_create_key(self.state_dir / "token-signing.key"),
                                        self._current_pod, clock)
        self.runtime.authenticator = TokenAuthenticator(self.authority.review, self.config.token_audience)
        self.admin_token = AdminToken(self.state_dir / "admin-token")
        self.servers = Servers(self.runtime, api_routes=lambda app: add_admin_routes(
            app, self.admin_token, lambda: overview(self.runtime, [p.key for p in self.mesh.peerings],
                                                    self.runtime.issued, self.mesh.pod_netns,
                                                    self.mesh.services), self.rotate_ca))
        self._tokens_issued: dict[PodKey, float] = {}
        self._bundle_written: tuple[str, ...] = ()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []

    # ---- paths and URL --------------------------------------------------------

    @property
    def url(self) -> str:
        host = self.config.api_host
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{self.servers.ports.get('api', self.config.api_port)}"

    @property
    def bundle_url(self) -> str | None:
        if "bundle" not in self.servers.ports:
            return None
        return self.url.rsplit(":", 1)[0] + f":{self.servers.ports['bundle']}{BUNDLE_PATH}"

    def token_path(self, namespace: str, name: str) -> Path:
        return self.state_dir / "pods" / namespace / name / "token"

    def _current_pod(self, namespace: str, name: str) -> PodInfo | None:
        return self.runtime.index.pod((namespace, name))

    # ---- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Load the CA and keys, index the YAML, serve the API, write the files (in that order)."""
        await self.runtime.load_or_create_ca()
        self.runtime.ca_listeners.append(self._write_trust_bundle)
        self._write_trust_bundle()
        async with self._lock:
            await self._apply(StandaloneConfig(self.mesh.trust_domain, {}, (), (), {}), self.mesh)
        await self.servers.start()
        write_private(self.state_dir / "api-url", (self.url + "\n").encode(), 0o644)
        if self.bundle_url is not None:
            write_private(self.state_dir / "bundle-url", (self.bundle_url + "\n").encode(), 0o644)
        logger.info("standalone operator serving the mesh API at %s: %d pod(s), %d peering(s)",
                    self.url, len(self.mesh.pods), len(self.mesh.peerings))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        (self.state_dir / "api-url").unlink(missing_ok=True)
        (self.state_dir / "bundle-url").unlink(missing_ok=True)
        await self.servers.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; SIGHUP reloads, SIGTERM/SIGINT set `stop` (when in the main thread)."""
        loop = asyncio.get_running_loop()
        try:
            await self.start()
        except BaseException:
            await self.stop()  # e.g. the port is taken: release what did start
            raise
        installed = []
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread: the caller handles signals
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
            installed.append(signal.SIGHUP)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
        self._spawn(self._maintain_forever())
        try:
            await stop.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self.stop()

    def _spawn(self, coroutine: Any) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine))

    # ---- reload and maintenance -------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the YAML and apply what changed; a bad file changes nothing. True if applied."""
        try:
            new = load_config(self.config_path)
        except StandaloneConfigError as exc:
            logger.error("reload refused, keeping the running configuration: %s", exc)
            return False
        if new.trust_domain != self.mesh.trust_domain:
            logger.error("reload refused: changing trustDomain needs a restart (every identity changes)")
            return False
        if new.bundle_port != self.mesh.bundle_port:
            logger.error("reload refused: changing bundleEndpoint needs a restart (it is a listening port)")
            return False
        async with self._lock:
            new = self._with_uids(new)
            await self._apply(self.mesh, new)
            self.mesh = new
        logger.info("reloaded %s: %d pod(s), %d peering(s), %d Service object(s)", self.config_path, len(new.pods),
                    len(new.peerings), len(new.services))
        return True

    async def rotate_ca(self) -> str | None:
        """Start a mesh CA rotation now: the successor is published at once and signs after
        ca.propagation. Refused (a reason) while a successor is still propagating, or for a
        CA supplied by the administrator."""
        async with self._lock:
            ca, now = self.runtime.ca, self.runtime.clock()
            if ca is None or not ca.managed:
                return "the mesh CA was supplied by the administrator: it is never rotated here"
            newest = ca.ring.newest()
            if newest is not None and newest.activate_at > now:
                return f"a rotation is under way: {newest.id} signs from {int(newest.activate_at)}"
            await self.runtime.rotate_ca_if_due(now_please=True)
        logger.info("mesh CA rotation started on request: %s", self.runtime.ca.ring.newest().id)
        return None

    def _with_uids(self, config: StandaloneConfig) -> StandaloneConfig:
        return replace(config, pods=self.incarnations.assign(config.pods))

    async def maintain(self) -> None:
        """One round of what the kopf timers do: CA and PSK rotation, remote references; plus token renewal."""
        async with self._lock:
            await self.runtime.rotate_ca_if_due()
            for spec in self.mesh.peerings:
                await self._apply_peering(spec)
            for pod in self.mesh.pods:
                self._write_token(pod)

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.key_check_interval)
            try:
                await self.maintain()
            except Exception:  # keep the loop alive; the next round retries
                logger.exception("maintenance round failed")

    async def _apply(self, old: StandaloneConfig, new: StandaloneConfig) -> None:
        index = self.runtime.index
        self.store.config_maps = dict(new.config_maps)
        old_namespaces, new_namespaces = old.namespace_labels(), new.namespace_labels()
        for name, labels in new_namespaces.items():
            index.set_namespace_labels(name, labels)
        new_peerings = {spec.key: spec for spec in new.peerings}
        for spec in old.peerings:
            if spec.key not in new_peerings:
                self.runtime.forget_peering(spec.key)
                if spec.auth is AuthKind.PSK and self.store.delete_secret(spec.namespace, secret_name(spec.name)):
                    logger.info("peering %s/%s removed: its PSK Secret deleted", *spec.key)
        for spec in new.peerings:
            await self._apply_peering(spec)
        new_pods = {pod.key: pod for pod in new.pods}
        for pod in old.pods:
            if pod.key not in new_pods:
                self.runtime.remove_pod(pod.key)
                self._tokens_issued.pop(pod.key, None)
                shutil.rmtree(self.token_path(*pod.key).parent, ignore_errors=True)
        for pod in new.pods:
            previous = index.pod(pod.key)
            index.upsert_pod(pod)
            if previous is not None and previous.uid != pod.uid:
                self._tokens_issued.pop(pod.key, None)  # a new pod of that name: the old token names the old uid
            self._write_token(pod)
        old_services, new_services = old.service_objects(), new.service_objects()
        for key in old_services.keys() - new_services.keys():
            kind, body = old_services[key]
            self.runtime.apply_service_event(kind, "DELETED", body)
        for key, (kind, body) in new_services.items():
            if old_services.get(key) != (kind, body):
                self.runtime.apply_service_event(kind, "MODIFIED", body)
        for name in set(old_namespaces) - set(new_namespaces):
            index.remove_namespace(name)

    async def _apply_peering(self, spec: PeeringSpec) -> None:
        problems, _ = await self.runtime.apply_peering(spec, _owner(spec))
        for problem in problems:
            logger.warning("peering %s/%s: %s", spec.namespace, spec.name, problem)

    # ---- files ------------------------------------------------------------------

    def _write_token(self, pod: PodInfo) -> None:
        now = self.runtime.clock()
        issued = self._tokens_issued.get(pod.key)
        if issued is not None and now < issued + self.token_lifetime / 2:
            return
        token = self.authority.issue(pod, self.config.token_audience, self.token_lifetime)
        write_private(self.token_path(*pod.key), token.encode())
        self._tokens_issued[pod.key] = now

    def _write_trust_bundle(self) -> None:
        bundle = self.runtime.index.trust_bundle
        if bundle and bundle != self._bundle_written:
            write_private(self.state_dir / "ca-bundle.pem", "".join(bundle).encode(), 0o644)
            self._bundle_written = bundle
