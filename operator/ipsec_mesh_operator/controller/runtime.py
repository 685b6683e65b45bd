"""The operator's state in one place: index, CA, PSKs, sidecar reports, and the Kubernetes calls behind them.

kopf handlers (handlers.py) feed it; the mesh API (api.py) reads from it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from ipsec_mesh.meshapi import (
    AuthKind,
    IssuedCertificate,
    PeeringPolicy,
    PeerMap,
    PeerMapError,
    PskKey,
    fields,
    service_account_uri,
)
from ipsec_mesh.meshapi.status import StatusReport

from .. import metrics
from ..model.peering import PeeringSpec
from ..model.peering_status import PeeringHealth
from ..model.services import ServiceTable, SliceInfo, parse_service
from ..model.settings import REMOTE_SECRET_LABEL, OperatorConfig
from ..pki.ca import CAStateError, CertificateAuthority, LeafIdentity, certificate_pem
from ..pki.psk import PskRing, PskStateError, secret_name
from .federation import Federation
from .index import MeshIndex, PeeringKey, PodKey
from .kube import KubeClient, decode_secret_data
from .secret_writes import SecretKeptChanging, write_decided
from .token_review import Caller, TokenAuthenticator

logger = logging.getLogger("ipsec_mesh_operator")

#: CHILD_SAs a pod may claim per peer address of a policy (rekey overlap, per-Service selectors).
MAX_SAS_PER_PEER_ADDRESS = 8
#: Labels of every Secret the operator creates.
PART_OF_MESH = {"app.kubernetes.io/part-of": "ipsec-mesh"}
#: Addresses of a remote cluster's CIDRs counted towards that bound.
MAX_REMOTE_ADDRESSES = 1024


class NotAllowed(Exception):
    """An authenticated caller asked for something that is not its own (HTTP 403)."""


class NotReady(Exception):
    """The operator does not know the caller's pod yet (HTTP 503, retry)."""


class TooManyRequests(Exception):
    """The caller's pod has max_requests_per_pod requests open already (HTTP 429)."""


class OperatorRuntime:
    def __init__(self, config: OperatorConfig, kube: KubeClient, clock: Callable[[], float] = time.time):
        self.config = config
        self.kube = kube
        self.clock = clock
        self.index = MeshIndex(config.trust_domain, ServiceTable(
            max_services_per_namespace=config.max_services_per_namespace,
            max_slices_per_namespace=config.max_endpoint_slices_per_namespace))
        self.ca: CertificateAuthority | None = None
        self.psk: dict[PeeringKey, PskRing] = {}
        self.reports: dict[PodKey, tuple[float, StatusReport]] = {}
        self.authenticator = TokenAuthenticator(self._token_review, config.token_audience)
        #: The pending long polls of each pod: resolved by the next change of its map, or by their timers.
        self._watchers: dict[PodKey, set[asyncio.Future]] = {}
        #: Open mesh API requests per calling pod (only pods with one open are in it).
        self.requests_in_flight: dict[PodKey, int] = {}
        self.releasing_watchers = False
        self.index.listeners.append(self._on_maps_changed)
        self.ca_listeners: list[Callable[[], None]] = []
        self.federation = Federation(clock)

    # ---- mesh CA -----------------------------------------------------------

    async def load_or_create_ca(self) -> CertificateAuthority:
        ns, name = self.config.namespace, self.config.ca_secret

        async def load_or_create(stored: dict[str, Any] | None) -> tuple[CertificateAuthority, dict[str, bytes] | None]:
            if stored is not None:
                return CertificateAuthority.from_secret_data(decode_secret_data(stored),
                                                             self.config.max_cert_lifetime), None
            now = self.clock()
            ca = CertificateAuthority.create(now, self.config.max_cert_lifetime, self.config.ca_lifetime)
            return ca, ca.to_secret_data(now)  # another replica creating it first: theirs is loaded instead

        try:
            self.ca, created = await write_decided(self.kube, ns, name, "ca", load_or_create, labels=PART_OF_MESH)
        except SecretKeptChanging as exc:
            raise CAStateError(str(exc)) from None
        logger.info("mesh CA %s Secret %s/%s", "created in" if created else "loaded from", ns, name)
        await self.rotate_ca_if_due()
        self.index.set_trust_bundle(self.ca.trust_bundle(self.clock()))
        return self.ca

    async def adopt_ca_secret(self, secret: Any) -> bool:
        """Take the CA stored in `secret` if it differs from ours and is usable; True if adopted.

        What is read is hostile until checked: anything unusable (malformed, a key that is
        not its certificate's, no CA active now) keeps the CA in use, is counted and logged
        without its content. A Secret gone keeps the CA too (its creator writes it back).
        """
        if secret is None or self.ca is None:
            return False
        now = self.clock()
        try:
            stored = CertificateAuthority.from_secret_data(decode_secret_data(secret), self.config.max_cert_lifetime)
            if stored.ring.active(now) is None or not stored.trust_bundle(now):
                raise CAStateError("no CA generation of the Secret is active now")
        except (CAStateError, ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
            metrics.KEYS_REFUSED.labels("ca").inc()
            reason = str(exc) if isinstance(exc, CAStateError) else f"malformed ({type(exc).__name__})"
            logger.warning("mesh CA Secret %s/%s refused, the CA in use is kept: %s",
                           self.config.namespace, self.config.ca_secret, reason)
            return False
        if stored.ring == self.ca.ring:
            return False
        self.ca = stored
        self.index.set_trust_bundle(stored.trust_bundle(now))
        for listener in self.ca_listeners:  # the serving certificate follows a change of the signing CA
            listener()
        logger.info("mesh CA reloaded from Secret %s/%s", self.config.namespace, self.config.ca_secret)
        return True

    async def rotate_ca_if_due(self, now_please: bool = False) -> bool:
        """Rotate the mesh CA on schedule (or at once with `now_please`: the standalone admin's request).

        Decided on the Secret as stored and written only if it is still that version (its
        resourceVersion is the write's precondition): replicas rotate without a leader, and two
        rotating at once would otherwise each overwrite the other's new CA. The one whose write
        is refused adopts the winner's CA and decides again (normally: nothing left to do).
        """
        assert self.ca is not None
        now = self.clock()
        bundle_before = self.ca.trust_bundle(now)
        interval = 0 if now_please else self.config.ca_rotation_interval

        async def rotate(stored: dict[str, Any] | None) -> tuple[tuple[CertificateAuthority, bool, float],
                                                                   dict[str, bytes] | None]:
            await self.adopt_ca_secret(stored)  # another replica's rotation first: then nothing may be due
            assert self.ca is not None
            now = self.clock()
            rotated = self.ca.copy()
            changed = rotated.rotate_if_due(now, interval, self.config.ca_propagation, self.config.ca_lifetime)
            return (rotated, changed, now), rotated.to_secret_data(now) if changed else None

        try:
            (rotated, changed, now), written = await write_decided(
                self.kube, self.config.namespace, self.config.ca_secret, "ca", rotate, labels=PART_OF_MESH)
        except SecretKeptChanging as exc:
            raise CAStateError(str(exc)) from None
        if written:
            self.ca = rotated
            metrics.KEY_ROTATIONS.labels("ca").inc()
        bundle = self.ca.trust_bundle(now)
        if bundle != bundle_before or changed:
            self.index.set_trust_bundle(bundle)
        for listener in self.ca_listeners:
            listener()
        return changed

    async def publish_webhook_ca_bundle(self) -> None:
        """Put the mesh trust bundle into our webhook configurations' caBundle (they trust our serving cert)."""
        assert self.ca is not None
        if self.config.webhook_tls_dir or not self.config.webhook_enabled:
            return  # cert-manager injects the CA bundle of its own certificate; or no webhooks at all
        bundle = base64.b64encode("".join(self.ca.trust_bundle(self.clock())).encode()).decode()
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            for name in self.config.webhook_configs:
                path = f"/apis/admissionregistration.k8s.io/v1/{kind}/{name}"
                current = await self.kube.get(path)
                if current is None:
                    continue
                webhooks = current.get("webhooks") or []
                if all((w.get("clientConfig") or {}).get("caBundle") == bundle for w in webhooks):
                    continue
                for webhook in webhooks:
                    webhook.setdefault("clientConfig", {})["caBundle"] = bundle
                await self.kube.merge_patch(path, {"webhooks": webhooks})
                logger.info("caBundle of %s %s updated", kind, name)

    # ---- pre-shared keys ---------------------------------------------------

    def secrets_granted(self, namespace: str) -> bool:
        """Whether RBAC lets the operator use Secrets in `namespace` (rbac.secretNamespaces; empty: all)."""
        return not self.config.secret_namespaces or namespace in self.config.secret_namespaces

    def _not_granted(self, namespace: str) -> str:
        return (f"the operator is not granted Secrets in namespace {namespace} "
                f"(chart value rbac.secretNamespaces: {', '.join(self.config.secret_namespaces)})")

    async def ensure_psk(self, spec: PeeringSpec, owner: dict[str, Any]) -> PskRing:
        """Load the peering's PSK Secret, creating it (owned by the peering) the first time."""
        if spec.key in self.psk:  # loaded already: periodic checks need no API call
            await self.rotate_psk_if_due(spec, owner)
            return self.psk[spec.key]

        async def load_or_create(stored: dict[str, Any] | None) -> tuple[PskRing, dict[str, bytes] | None]:
            if stored is not None:
                return PskRing.from_secret_data(decode_secret_data(stored)), None
            ring = PskRing.create(self.clock())
            return ring, ring.to_secret_data()

        self.psk[spec.key], _ = await write_decided(self.kube, spec.namespace, secret_name(spec.name), "psk",
                                                    load_or_create, labels=_psk_labels(spec), owner=owner)
        await self.rotate_psk_if_due(spec, owner)
        return self.psk[spec.key]

    async def rotate_psk_if_due(self, spec: PeeringSpec, owner: dict[str, Any] | None = None) -> None:
        """Rotate (or prune) the peering's PSKs when due on what this replica holds, decided again on
        the Secret as stored and written against that version (secret_writes.py): a key another
        writer stored meanwhile is adopted, never overwritten. `owner`: for writing back a deleted Secret."""
        ring = self.psk.get(spec.key)
        if ring is None:
            return
        now = self.clock()
        if ring.copy().rotate_if_due(now, spec.psk_rotation_interval, spec.psk_overlap):
            async def rotate(stored: dict[str, Any] | None) -> tuple[tuple[PskRing, bool], dict[str, bytes] | None]:
                rotated = (self._stored_psk(spec, stored) or self.psk[spec.key]).copy()
                newest_before = rotated.ring.newest()
                changed = rotated.rotate_if_due(now, spec.psk_rotation_interval, spec.psk_overlap)
                return (rotated, rotated.ring.newest() != newest_before), rotated.to_secret_data() if changed else None

            (ring, new_key), written = await write_decided(self.kube, spec.namespace, secret_name(spec.name), "psk",
                                                           rotate, labels=_psk_labels(spec), owner=owner)
            self.psk[spec.key] = ring
            if written and new_key:
                metrics.KEY_ROTATIONS.labels("psk").inc()
        self.index.set_psk_keys(spec.key, ring.keys(now))

    def _stored_psk(self, spec: PeeringSpec, stored: dict[str, Any] | None) -> PskRing | None:
        """The ring a PSK Secret holds; None if there is none or it is unusable (counted, logged without content)."""
        if stored is None:
            return None
        try:
            return PskRing.from_secret_data(decode_secret_data(stored))
        except (PskStateError, ValueError, TypeError) as exc:
            metrics.KEYS_REFUSED.labels("psk").inc()
            logger.warning("PSK Secret of %s/%s refused, the keys in use are kept: %s", spec.namespace, spec.name,
                           exc if isinstance(exc, PskStateError) else f"malformed ({type(exc).__name__})")
            return None

    async def refresh_remotes(self, spec: PeeringSpec) -> list[str]:
        """Load remote clusters' trust bundles / PSKs into the index; returns problems to report."""
        problems = []
        for remote in spec.remotes:
            if spec.auth is AuthKind.PSK and remote.psk_secret_ref is not None:
                ref_name, ref_key = remote.psk_secret_ref
                value, problem = await self._remote_secret(spec.namespace, ref_name, ref_key)
                if problem is None and (value is None or len(value) < 32):
                    problem = f"Secret {ref_name} key {ref_key} missing or < 32 bytes"
                if problem is not None:
                    self.index.set_remote_psk_keys(spec.key, remote.name, ())
                    problems.append(f"remote {remote.name}: {problem}")
                    continue
                self.index.set_remote_psk_keys(spec.key, remote.name, (PskKey(f"{ref_name}", value),))
            elif remote.federation is not None:
                bootstrap, problem = await self._read_bundle(spec.namespace, remote.federation.bootstrap_ref)
                if problem is not None and remote.name not in self.federation.of(spec.key):
                    self.index.set_remote_trust_bundle(spec.key, remote.name, ())
                    problems.append(f"remote {remote.name}: bootstrap bundle: {problem}")
                    continue
                # A bootstrap reference gone bad later changes nothing: the fetched bundle stands on its own.
                held = self.federation.of(spec.key).get(remote.name)
                state = await self.federation.refresh(
                    spec.key, remote.name, remote.federation, bootstrap if problem is None else held.bootstrap)
                self.index.set_remote_trust_bundle(spec.key, remote.name, state.bundle)
            elif remote.trust_bundle_ref is not None:
                pems, problem = await self._read_bundle(spec.namespace, remote.trust_bundle_ref)
                if problem is not None:
                    self.index.set_remote_trust_bundle(spec.key, remote.name, ())
                    problems.append(f"remote {remote.name}: {problem}")
                    continue
                self.index.set_remote_trust_bundle(spec.key, remote.name, pems)
        self.federation.forget(spec.key, frozenset(r.name for r in spec.remotes if r.federation is not None))
        return problems

    async def _read_bundle(self, namespace: str, ref: tuple[str, str, str]) -> tuple[tuple[str, ...], str | None]:
        """The PEM certificates of a ConfigMap/Secret key (else a problem to report)."""
        kind, ref_name, ref_key = ref
        if kind == "Secret":
            value, problem = await self._remote_secret(namespace, ref_name, ref_key)
        else:
            value, problem = await self.kube.read_config_data(kind, namespace, ref_name, ref_key), None
        pems = _split_pem(value.decode(errors="replace")) if value else ()
        if problem is None and not pems:
            problem = f"{kind} {ref_name} key {ref_key} holds no certificate"
        return pems, problem

    async def _remote_secret(self, namespace: str, name: str, key: str) -> tuple[bytes | None, str | None]:
        """A key of a Secret that opted in to being named by peerings (else a problem to report).

        Without the opt-in, whoever may create a peering could have any Secret of the namespace
        (a database password, another peering's PSK) served to pods as a key: the operator
        reads Secrets its users may not.
        """
        if not self.secrets_granted(namespace):
            return None, self._not_granted(namespace)
        secret = await self.kube.read_secret(namespace, name)
        if secret is None:
            return None, None
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if labels.get(REMOTE_SECRET_LABEL) != "true":
            return None, f"Secret {name} is not labelled {REMOTE_SECRET_LABEL}=true; it is not used"
        return decode_secret_data(secret).get(key), None

    async def apply_peering(self, spec: PeeringSpec, owner: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """Index a valid peering, load (or create, or rotate) its PSK, load its remote references.

        What both the kopf handlers and the standalone operator do for each peering, on every
        change and on every maintenance round. Returns the problems to report and the extra
        status fields (PSK Secret and key id).
        """
        self.index.upsert_peering(spec)
        extra: dict[str, str] = {}
        if spec.auth is AuthKind.PSK and not self.secrets_granted(spec.namespace):
            # RBAC would refuse the PSK Secret: say why (the keys condition too) instead of failing on a 403.
            return [f"no pre-shared key: {self._not_granted(spec.namespace)}", *await self.refresh_remotes(spec)], extra
        if spec.auth is AuthKind.PSK:
            ring = await self.ensure_psk(spec, owner)
            now = self.clock()
            # Every key accepted now: a new key changes the status before anyone initiates with it,
            # and that change of the peering is what makes the other replicas read the Secret at once.
            extra = {"pskSecretName": secret_name(spec.name), "pskKeyId": ring.active_id(now) or "",
                     "pskKeys": [key.id for key in ring.keys(now)]}
        return await self.refresh_remotes(spec), extra

    async def maintain_ca(self, on_rotated: Callable[[], Awaitable[None]] | None = None) -> None:
        """Forever: check the mesh CA's rotation every key_check_interval."""
        while True:
            await asyncio.sleep(self.config.key_check_interval)
            try:  # reads the Secret first: adopts what another replica stored, then rotates if due
                if await self.rotate_ca_if_due() and on_rotated is not None:
                    await on_rotated()
            except Exception:  # keep the loop alive; the next round retries
                logger.exception("mesh CA maintenance failed")

    async def follow_keys(self, spec: PeeringSpec) -> None:
        """Read side (every replica): adopt the PSK the writer stored, never create or rotate one here."""
        if spec.auth is AuthKind.PSK and self.secrets_granted(spec.namespace):
            secret = await self.kube.read_secret(spec.namespace, secret_name(spec.name))
            if secret is not None:
                try:
                    stored = PskRing.from_secret_data(decode_secret_data(secret))
                except PskStateError as exc:
                    logger.warning("PSK Secret of %s/%s unusable: %s", spec.namespace, spec.name, exc)
                else:
                    current = self.psk.get(spec.key)
                    # Never step back: the writer changes its ring before it stores it.
                    if current is None or _newest_created(stored) >= _newest_created(current):
                        self.psk[spec.key] = stored
            ring = self.psk.get(spec.key)
            if ring is not None:
                self.index.set_psk_keys(spec.key, ring.keys(self.clock()))
        await self.refresh_remotes(spec)

    def forget_peering(self, key: PeeringKey) -> None:
        self.index.remove_peering(key)
        self.psk.pop(key, None)
        self.federation.forget(key)

    def published_bundle(self) -> tuple[tuple[str, ...], int]:
        """What the bundle endpoint serves: the mesh trust bundle and its sequence (newest CA's creation)."""
        if self.ca is None:
            return (), 0
        newest = self.ca.ring.newest()
        return self.ca.trust_bundle(self.clock()), int(newest.created_at) if newest else 0

    # ---- Services ------------------------------------------------------------

    def apply_service_event(self, kind: str, event_type: str | None, body: Any) -> None:
        """A watch event of a Service or an EndpointSlice (`kind`) into the index.

        What the kopf handlers and the standalone operator both call. An object the mesh
        cannot use (malformed, past a bound) is logged once and left out, and so is any
        earlier version of it: a map never lists what the API server no longer says.
        """
        meta = body.get("metadata") if isinstance(body, Mapping) else None
        key = (str((meta or {}).get("namespace", "")), str((meta or {}).get("name", "")))
        index = self.index
        remove = index.remove_service if kind == "Service" else index.remove_endpoint_slice
        if event_type == "DELETED":
            remove(key)
            index.services.clear_problem(kind, key)
            return
        try:
            parsed = parse_service(body) if kind == "Service" else SliceInfo.from_body(body)
            if parsed is None:
                remove(key)  # headless, ExternalName, FQDN, no Service: nothing for the mesh
            elif kind == "Service":
                index.upsert_service(parsed)
            else:
                index.upsert_endpoint_slice(parsed)
        except PeerMapError as exc:
            remove(key)
            if index.services.note_problem(kind, key, str(exc)):
                logger.warning("%s %s/%s left out of the peer maps: %s", kind, *key, exc)
            return
        index.services.clear_problem(kind, key)

    # ---- mesh API operations ----------------------------------------------

    async def _token_review(self, body: dict[str, Any]) -> dict[str, Any] | None:
        return await self.kube.create("/apis/authentication.k8s.io/v1/tokenreviews", body)

    @contextlib.contextmanager
    def request_slot(self, caller: Caller) -> Iterator[None]:
        """Hold one of the caller's max_requests_per_pod slots while its request runs (long polls included)."""
        key = (caller.namespace, caller.pod)
        open_now = self.requests_in_flight.get(key, 0)
        if open_now >= self.config.max_requests_per_pod:
            raise TooManyRequests(f"pod {key[0]}/{key[1]} has {open_now} requests open already")
        self.requests_in_flight[key] = open_now + 1
        try:
            yield
        finally:
            left = self.requests_in_flight[key] - 1
            if left:
                self.requests_in_flight[key] = left
            else:
                del self.requests_in_flight[key]

    def pod_of(self, caller: Caller) -> PodKey:
        key = (caller.namespace, caller.pod)
        info = self.index.pod(key)
        if info is None:
            raise NotReady(f"pod {caller.namespace}/{caller.pod} is not in the mesh (yet)")
        if info.uid != caller.pod_uid:
            raise NotAllowed("the token belongs to an earlier pod of the same name")
        if info.service_account != caller.service_account:
            raise NotAllowed("the token's ServiceAccount is not the pod's")
        return key

    def certificate_lifetime(self, pod: PodKey) -> int:
        lifetimes = [
            spec.certificate_lifetime for key in self.index.effective_peerings(pod)
            if (spec := self.index.peering(key)) is not None
        ]
        return min(lifetimes, default=self.config.max_cert_lifetime)

    def sign(self, caller: Caller, csr_pem: bytes) -> IssuedCertificate:
        pod = self.pod_of(caller)
        assert self.ca is not None
        info = self.index.pod(pod)
        identity = LeafIdentity(
            dns_name=info.identity(self.config.trust_domain) or "",
            uri=service_account_uri(info.namespace, info.service_account, self.config.trust_domain),
        )
        if not identity.dns_name:
            raise NotAllowed(f"pod name {info.name!r} cannot form an identity")
        now = self.clock()
        started = time.perf_counter()
        cert = self.ca.sign_csr(csr_pem, identity, self.certificate_lifetime(pod), now)
        metrics.SIGNING_SECONDS.observe(time.perf_counter() - started)
        metrics.CERTIFICATES_ISSUED.inc()
        return IssuedCertificate(
            certificate=certificate_pem(cert),
            chain=(certificate_pem(self.ca.active_certificate(now)),),
            trust_bundle=self.ca.trust_bundle(now),
            not_after=int(cert.not_valid_after_utc.timestamp()),
        )

    def peer_map(self, pod: PodKey) -> PeerMap | None:
        return self.index.peer_map(pod)

    async def wait_for_peer_map(self, pod: PodKey, since: int, timeout: float) -> PeerMap | None:
        """The pod's map once its version is above `since`, or None after `timeout`."""
        delivery = await self._wait_for_change(pod, since, timeout)
        return None if delivery is None else delivery.peer_map

    async def wait_for_peer_map_json(self, pod: PodKey, since: int, timeout: float) -> bytes | None:
        """The same as JSON: the watchers of a pod woken by one change share one serialisation."""
        delivery = await self._wait_for_change(pod, since, timeout)
        return None if delivery is None else delivery.document()

    async def next_peer_map(self, pod: PodKey, since: int, timeout: float) -> tuple[int, bytes] | None:
        """The version and JSON of the pod's map once above `since` (a streaming watch's next frame)."""
        delivery = await self._wait_for_change(pod, since, timeout)
        return None if delivery is None else (delivery.peer_map.version, delivery.document())

    async def _wait_for_change(self, pod: PodKey, since: int, timeout: float) -> _Delivery | None:
        if not (math.isfinite(timeout) and timeout >= 0):
            # A NaN deadline breaks the ordering of the event loop's timer heap: every timer stalls.
            raise ValueError(f"timeout must be a finite number of seconds, not {timeout!r}")
        metrics.PEER_MAP_WATCHERS.inc()
        try:
            if self.index.version(pod) > since or since == 0:
                return _Delivery.of(self.index.peer_map(pod))
            if self.releasing_watchers or timeout <= 0:
                return None  # shutting down: "no change yet"; the sidecar asks the next replica
            # A bare future and a timer per long poll (no task, no Event): at 10,000 watchers the
            # cost per waiting connection is what bounds a replica.
            loop = asyncio.get_running_loop()
            woken: asyncio.Future[list[_Delivery | None]] = loop.create_future()
            waiting = self._watchers.setdefault(pod, set())
            waiting.add(woken)
            timer = loop.call_later(timeout, _settle, woken, None)
            try:
                shared = await woken
            finally:
                timer.cancel()
                waiting.discard(woken)
                if not waiting and self._watchers.get(pod) is waiting:
                    del self._watchers[pod]
            if shared is None or self.index.version(pod) <= since:
                return None  # timed out, or released at shutdown
            if not shared:  # the first of this change's watchers to run builds what they all send
                shared.append(_Delivery.of(self.index.peer_map(pod)))
            return shared[0]
        finally:
            metrics.PEER_MAP_WATCHERS.dec()

    def release_watchers(self) -> None:
        """Answer every pending long poll now (shutdown): the HTTP server waits for open requests."""
        self.releasing_watchers = True
        watchers, self._watchers = self._watchers, {}
        for waiting in watchers.values():
            for woken in list(waiting):
                _settle(woken, None)

    def _on_maps_changed(self, pods: set[PodKey]) -> None:
        metrics.PEER_MAP_UPDATES.inc(len(pods))
        count = 0
        for pod in pods:
            waiting = self._watchers.pop(pod, None)
            if waiting:
                shared: list[_Delivery | None] = []
                for woken in list(waiting):
                    _settle(woken, shared)
                count += len(waiting)
        metrics.PEER_MAP_WATCHERS_WOKEN.inc(count)

    def record_status(self, pod: PodKey, report: StatusReport) -> None:
        """Keep what the pod says about the policies of its own peer map, within what they allow."""
        peer_map = self.index.peer_map(pod)
        governing = {policy.name: policy for policy in peer_map.policies} if peer_map is not None else {}
        kept = tuple(
            replace(status, last_error=fields.printable(status.last_error),
                    established_sas=min(status.established_sas, _max_sas(governing[status.name])))
            for status in report.peerings if status.name in governing
        )
        self.reports[pod] = (self.clock(), replace(report, peerings=kept))

    def forget_pod(self, pod: PodKey) -> None:
        self.reports.pop(pod, None)

    def remove_pod(self, pod: PodKey) -> None:
        """The pod is gone: out of the index (its counterparts' maps change) and its reports dropped."""
        self.index.remove_pod(pod)
        self.forget_pod(pod)

    # ---- status aggregation -----------------------------------------------

    def health(self, key: PeeringKey) -> PeeringHealth:
        """What the sidecars of the peering's members report, for its status."""
        name = f"{key[0]}/{key[1]}"
        now = self.clock()
        members = self.index.members(key)
        established, reporting, errors = 0, 0, []
        for pod in members | self.index.peer_pods(key):
            entry = self.reports.get(pod)
            if entry is None or now - entry[0] > self.config.status_ttl:
                continue
            if key not in self.index.effective_peerings(pod):
                continue  # e.g. its namespace never consented (any more): it has no say on this peering
            reporting += 1
            for status in entry[1].peerings:
                if status.name == name or status.name.startswith(name + "/"):
                    if pod in members:
                        established += status.established_sas
                    if status.last_error:
                        errors.append(f"{pod[0]}/{pod[1]}: {status.last_error}")
        spec = self.index.peering(key)
        return PeeringHealth(len(members), len(self.index.peer_pods(key)), established, reporting,
                             tuple(sorted(errors)[:5]),
                             self.index.one_sided_namespaces(spec) if spec is not None else ())


class _Delivery:
    """A pod's map as the watchers woken by one change send it: serialised once, by the first."""

    __slots__ = ("peer_map", "_json")

    def __init__(self, peer_map: PeerMap):
        self.peer_map = peer_map
        self._json: bytes | None = None

    @classmethod
    def of(cls, peer_map: PeerMap | None) -> _Delivery | None:
        return None if peer_map is None else cls(peer_map)

    def document(self) -> bytes:
        if self._json is None:
            self._json = self.peer_map.to_json()
        return self._json


def _settle(future: asyncio.Future, result: object) -> None:
    if not future.done():
        future.set_result(result)


def _max_sas(policy: PeeringPolicy) -> int:
    addresses = sum(min(sum(net.num_addresses for net in peer.addresses), MAX_REMOTE_ADDRESSES)
                    for peer in policy.peers)
    return MAX_SAS_PER_PEER_ADDRESS * addresses


def _psk_labels(spec: PeeringSpec) -> dict[str, str]:
    return {**PART_OF_MESH, "ipsec-mesh.io/peering": spec.name}


def _newest_created(ring: PskRing) -> float:
    newest = ring.ring.newest()
    return float("-inf") if newest is None else newest.created_at


def _split_pem(text: str) -> tuple[str, ...]:
    marker = "-----END CERTIFICATE-----"
    parts = [part.strip() + "\n" + marker + "\n" for part in text.split(marker) if "BEGIN CERTIFICATE" in part]
    return tuple(part.lstrip() for part in parts)
