"""Who is calling the mesh API: a projected ServiceAccount token, checked by TokenReview.

The token must be bound to our audience and to a pod (the API server puts the
pod's name and uid in the review's `extra`). Reviews are cached briefly by
the token's hash so that a burst of calls costs one review.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

SA_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
MAX_TOKEN_BYTES = 16 * 1024
POSITIVE_TTL = 60.0
NEGATIVE_TTL = 5.0
MAX_CACHE = 50_000
#: RFC 6750 section 2.1: "Bearer", one space, a b64token; nothing else (no folding, no trailing junk).
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header exactly as sent, or None if it is not one."""
    if not authorization or len(authorization) > MAX_TOKEN_BYTES + len("Bearer "):
        return None
    match = _BEARER.fullmatch(authorization)
    return match.group(1) if match else None


class Unauthenticated(Exception):
    """The token is missing, forged, expired, for another audience, or not bound to a pod."""


@dataclass(frozen=True)
class Caller:
    namespace: str
    service_account: str
    pod: str
    pod_uid: str


ReviewFunction = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class TokenAuthenticator:
    def __init__(self, review: ReviewFunction, audience: str, clock: Callable[[], float] = time.monotonic):
        self._review = review
        self.audience = audience
        self._clock = clock
        self._cache: dict[bytes, tuple[float, Caller | None]] = {}

    async def authenticate(self, authorization: str | None) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("missing bearer token")
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated("malformed bearer token")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            if cached[1] is None:
                raise Unauthenticated("token refused")
            return cached[1]
        try:
            caller = await self._ask(token)
        except Unauthenticated:
            self._remember(digest, now + NEGATIVE_TTL, None)
            raise
        self._remember(digest, now + POSITIVE_TTL, caller)
        return caller

    def _remember(self, digest: bytes, until: float, caller: Caller | None) -> None:
        if len(self._cache) >= MAX_CACHE:
            now = self._clock()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
        self._cache[digest] = (until, caller)

    async def _ask(self, token: str) -> Caller:
        review = await self._review({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            # TokenReviews are not stored; a unique name keeps strict API emulators happy.
            "metadata": {"name": f"ipsec-mesh-{uuid.uuid4().hex}"},
            "spec": {"token": token, "audiences": [self.audience]},
        })
        status = (review or {}).get("status") or {}
        if not status.get("authenticated"):
            raise Unauthenticated(f"token refused: {status.get('error') or 'not authenticated'}")
        if self.audience not in (status.get("audiences") or []):
            raise Unauthenticated("token is not bound to the mesh API audience")
        user = status.get("user") or {}
        username = user.get("username") or ""
        if not username.startswith(SA_PREFIX) or username.count(":") != 3:
            raise Unauthenticated("token does not belong to a ServiceAccount")
        namespace, service_account = username[len(SA_PREFIX):].split(":")
        extra = user.get("extra") or {}
        pod = (extra.get(POD_NAME_EXTRA) or [None])[0]
        pod_uid = (extra.get(POD_UID_EXTRA) or [None])[0]
        if not pod or not pod_uid:
            raise Unauthenticated("token is not bound to a pod; use a projected ServiceAccount token")
        return Caller(namespace, service_account, pod, pod_uid)
