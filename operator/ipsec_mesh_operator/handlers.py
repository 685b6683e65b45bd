"""kopf handlers: the operator's entry point (`kopf run -m ipsec_mesh_operator.handlers`).

IPsecPeerings are reconciled on create/update/resume and checked on a timer
(key rotation, remote references, sidecar reports into the status): these are the
writers, which kopf peering runs on one replica only. The mesh index is fed by the
IndexFeeder's own watches (injected pods, namespace labels, peerings, Services and
EndpointSlices), which keep running on every replica, paused or not; the mesh API,
webhooks and metrics run in the same process, started at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import secrets
import socket
from typing import Any

import kopf

from ipsec_mesh.meshapi import AuthKind

from .controller.federation import fresh_condition
from .controller.feeder import IndexFeeder
from .controller.gcfreeze import CollectorPause, freeze_start_up_state
from .controller.kube import KubeClient, load_connection
from .controller.runtime import OperatorRuntime
from .model.peering import GROUP, PLURAL, VERSION, InvalidPeering, parse_peering
from .model.peering_status import desired_status, status_patch
from .model.settings import FINALIZER, OperatorConfig
from .pki.psk import secret_name
from .server.admission import make_webhook_app
from .server.health import Liveness
from .server.servers import Servers

logger = logging.getLogger("ipsec_mesh_operator")

# Read once at import: kopf takes timer intervals at decoration time.
_IMPORT_CONFIG = OperatorConfig.from_env()


def ensure_peering_identity() -> None:
    """Give kopf an identity where it cannot make one itself.

    kopf names itself after `getpass.getuser()` unless POD_ID is set (the chart sets it), and
    that raises for a uid without a passwd entry, like the image's 65532: the operator would
    die before its first handler. kopf reads POD_ID after importing this module.
    """
    if os.environ.get("POD_ID"):
        return
    try:
        getpass.getuser()
    except (KeyError, OSError):  # KeyError up to Python 3.12, OSError after
        os.environ["POD_ID"] = f"uid-{os.getuid()}@{socket.gethostname()}/{os.getpid()}"


ensure_peering_identity()


class _State:
    runtime: OperatorRuntime | None = None
    servers: Servers | None = None
    maintenance: asyncio.Task | None = None
    feeder: asyncio.Task | None = None
    liveness: Liveness | None = None


STATE = _State()


def runtime() -> OperatorRuntime:
    if STATE.runtime is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return STATE.runtime


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    connection = load_connection()
    return kopf.ConnectionInfo(
        server=connection.server,
        token=connection.token,
        scheme="Bearer" if connection.token else None,
        ca_path=connection.ca_path,
        certificate_path=connection.cert_path,
        private_key_path=connection.key_path,
        insecure=connection.insecure,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ipsec-mesh.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="ipsec-mesh.io", key="last-handled-configuration")
    settings.posting.level = logging.INFO
    draw_peering_priority(settings)
    config = OperatorConfig.from_env()
    if config.liveness_port:
        STATE.liveness = Liveness(config.liveness_max_stall)
        STATE.liveness.start(config.api_host, config.liveness_port)
    rt = OperatorRuntime(config, KubeClient(load_connection()))
    await rt.load_or_create_ca()
    servers = Servers(rt, make_webhook_app(rt) if config.webhook_enabled else None)
    feeder = IndexFeeder(rt, servers.readiness.synced)
    servers.readiness.require((), feeder.names)
    STATE.runtime = rt
    pause = CollectorPause(asyncio.get_running_loop())  # the listing builds long-lived state only
    STATE.feeder = asyncio.create_task(feeder.run())
    # kopf's handlers start after this: with the index complete, no status says "no members" for a moment.
    await feeder.synced.wait()
    pause.end()
    logger.info("start-up state frozen for the garbage collector: %d objects", freeze_start_up_state())
    await servers.start()
    await rt.publish_webhook_ca_bundle()
    STATE.servers = servers
    STATE.maintenance = asyncio.create_task(rt.maintain_ca(rt.publish_webhook_ca_bundle))


def draw_peering_priority(settings: kopf.OperatorSettings) -> None:
    """With kopf peering, give this replica a priority of its own (unless --priority set one).

    Replicas of a Deployment share their arguments, and kopf pauses every operator that
    sees another with the same priority: with distinct ones, exactly the highest runs.
    """
    if settings.peering.mandatory and not settings.peering.priority:
        settings.peering.priority = secrets.randbelow(2**31 - 1) + 1



@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in (STATE.maintenance, STATE.feeder):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if STATE.liveness is not None:
        await STATE.liveness.stop()
    if STATE.servers is not None:
        await STATE.servers.stop()
    if STATE.runtime is not None:
        await STATE.runtime.kube.close()
    STATE.runtime = STATE.servers = STATE.maintenance = STATE.feeder = STATE.liveness = None


# ---- peerings ---------------------------------------------------------------


async def _reconcile(name: str, namespace: str, spec: Any, body: kopf.Body, patch: kopf.Patch,
                     announce: bool) -> None:
    rt = runtime()
    key = (namespace, name)
    generation = body.metadata.get("generation") or 0
    try:
        parsed = parse_peering(namespace, name, dict(spec))
    except InvalidPeering as exc:
        # Keep the last valid version in the index: a bad edit must not drop working SAs.
        kopf.warn(body, reason="InvalidSpec", message=str(exc)[:1000])
        desired = desired_status(body.get("status"), generation, rt.health(key) if rt.index.peering(key) else None,
                                 exc.messages, _keys_state(rt, key, None), [])
        patch.status.update(status_patch(body.get("status"), desired))
        return
    before = rt.index.peering(key)
    problems, extra = await rt.apply_peering(parsed, kopf.build_owner_reference(body))
    health = rt.health(key)
    federated = rt.federation.of(key)
    if federated:
        extra = {**extra, "federation": [state.to_status(remote) for remote, state in sorted(federated.items())]}
    desired = desired_status(body.get("status"), generation, health, [], _keys_state(rt, key, parsed.auth),
                             problems, extra, fresh_condition(federated, rt.clock()))
    patch.status.update(status_patch(body.get("status"), desired))
    for problem in problems:
        kopf.warn(body, reason="ReferenceProblem", message=problem)
    if announce or before != parsed:
        kopf.info(body, reason="Reconciled",
                  message=f"{health.members} member pod(s), {health.peers} peer pod(s), {len(parsed.remotes)} remote(s)")


def _keys_state(rt: OperatorRuntime, key: tuple[str, str], auth: AuthKind | None) -> tuple[bool, str, str]:
    if auth is None:
        return False, "InvalidSpec", "no keys for an invalid spec"
    if auth is AuthKind.CERTIFICATE:
        ok = rt.ca is not None
        return ok, "MeshCA", "per-pod certificates from the mesh CA" if ok else "mesh CA not loaded"
    ring = rt.psk.get(key)
    if ring is None and not rt.secrets_granted(key[0]):
        return False, "SecretsNotGranted", f"no pre-shared key: Secrets of {key[0]} are not granted " \
                                           "(chart value rbac.secretNamespaces)"
    if ring is None:
        return False, "PskPending", "the pre-shared key is not generated yet"
    return True, "PskIssued", f"pre-shared key {ring.active_id(rt.clock())} in Secret {secret_name(key[1])}"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile_peering(name: str, namespace: str, spec: Any, body: kopf.Body, patch: kopf.Patch,
                            reason: str, **_: Any) -> None:
    await _reconcile(name, namespace, spec, body, patch, announce=reason != "resume")


@kopf.timer(GROUP, VERSION, PLURAL, interval=_IMPORT_CONFIG.key_check_interval, idle=0)
async def maintain_peering(name: str, namespace: str, spec: Any, body: kopf.Body, patch: kopf.Patch,
                           **_: Any) -> None:
    rt = runtime()
    key = (namespace, name)
    parsed = rt.index.peering(key)
    if parsed is None:
        return  # invalid or not reconciled yet; the reconcile handler reports it
    if parsed.auth is AuthKind.PSK and key in rt.psk:
        before = rt.psk[key].active_id(rt.clock())
        await rt.rotate_psk_if_due(parsed, kopf.build_owner_reference(body))
        after = rt.psk[key].active_id(rt.clock())
        if before != after:
            kopf.info(body, reason="PskRotated", message=f"now initiating with key {after}")
    await _reconcile(name, namespace, spec, body, patch, announce=False)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete_peering(name: str, namespace: str, **_: Any) -> None:
    # The PSK Secret is owned by the peering: Kubernetes garbage-collects it.
    runtime().forget_peering((namespace, name))
