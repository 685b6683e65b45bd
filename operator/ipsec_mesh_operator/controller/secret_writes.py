"""Writes of the Secrets the operator keeps its keys in (the mesh CA, each peering's PSKs).

Decided on the Secret as stored and written only if it is still that version: its
resourceVersion is the write's precondition (a create, when nothing is stored, fails if
someone created it first). Two replicas, or one acting on a stale cache, would otherwise
overwrite a newer key another one already published. A refused write is not retried as
is: the Secret is read again and the decision made again on what it now holds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from .. import metrics
from .kube import Conflict

logger = logging.getLogger("ipsec_mesh_operator")

#: Writes refused in a row (each after a re-read) before the caller's round gives up until the next.
WRITE_ATTEMPTS = 5

T = TypeVar("T")
#: What to keep and what to write (None: nothing), decided on the Secret as read now (None: there is none).
Decide = Callable[[dict[str, Any] | None], Awaitable[tuple[T, dict[str, bytes] | None]]]


class SecretStore(Protocol):
    """What KubeClient and the standalone FileSecretStore both offer."""

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_secret(self, namespace: str, name: str, data: dict[str, bytes],
                            labels: dict[str, str] | None = None,
                            owner: dict[str, Any] | None = None) -> dict[str, Any]: ...

    async def update_secret_data(self, namespace: str, name: str, data: dict[str, bytes],
                                 expected: dict[str, Any] | None = None) -> None: ...


class SecretKeptChanging(Exception):
    """Every attempt's write was refused: someone else kept writing the Secret."""


async def write_decided(store: SecretStore, namespace: str, name: str, kind: str, decide: Decide[T], *,
                        labels: dict[str, str], owner: dict[str, Any] | None = None) -> tuple[T, bool]:
    """Read, `decide`, write against the version read; again after a conflict. Returns the last
    decision's value and whether its data was written (False: nothing to write)."""
    for _ in range(WRITE_ATTEMPTS):
        stored = await store.read_secret(namespace, name)
        value, data = await decide(stored)
        if data is None:
            return value, False
        try:
            if stored is None:  # none yet, or deleted: written by whichever writer creates it first
                await store.create_secret(namespace, name, data, labels=labels, owner=owner)
            else:
                await store.update_secret_data(namespace, name, data, expected=stored)
        except Conflict:
            metrics.KEY_WRITE_CONFLICTS.labels(kind).inc()
            logger.info("%s Secret %s/%s changed since it was read: reading it again", kind, namespace, name)
            continue
        return value, True
    raise SecretKeptChanging(f"{kind} Secret {namespace}/{name} kept changing: "
                             f"{WRITE_ATTEMPTS} writes refused in a row")
