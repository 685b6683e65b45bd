"""A local token authority: what the API server and the kubelet do for projected ServiceAccount tokens.

`issue()` mints a token bound to one pod (namespace, ServiceAccount, name,
uid), an audience and an expiry, MACed with HMAC-SHA256 under a key kept in
the state directory. `review()` answers a TokenReview the way the API server
does, so it plugs into the operator's `TokenAuthenticator` unchanged: MAC
(constant-time), expiry, audience, and that the pod still exists with that uid.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..controller.index import PodInfo
from ..controller.token_review import POD_NAME_EXTRA, POD_UID_EXTRA, SA_PREFIX, bearer_token
from .store import write_private

PREFIX = "ims1."
KEY_BYTES = 32
MAX_TOKEN_CHARS = 8 * 1024
#: A token issued "in the future" by more than this is refused (clock steps).
CLOCK_SKEW = 60.0
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

PodLookup = Callable[[str, str], PodInfo | None]


class InvalidToken(Exception):
    """The token is malformed, forged, expired, for another audience, or its pod is gone."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict unpadded base64url: one spelling per byte string (no padding, junk or stray trailing bits)."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def load_or_create_key(path: Path) -> bytes:
    """The signing key, created (0600) on first start; tokens stay valid across restarts."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(KEY_BYTES)
        write_private(path, key)
        return key
    if len(key) != KEY_BYTES:
        raise InvalidToken(f"{path} does not hold a {KEY_BYTES}-byte key")
    return key


class TokenAuthority:
    def __init__(self, key: bytes, pods: PodLookup, clock: Callable[[], float] = time.time):
        if len(key) < KEY_BYTES:
            raise ValueError("the token signing key is too short")
        self._key = key
        self._pods = pods
        self._clock = clock

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._key, (PREFIX + payload).encode(), hashlib.sha256).digest()

    def issue(self, pod: PodInfo, audience: str, lifetime: float) -> str:
        now = self._clock()
        claims = {"ns": pod.namespace, "sa": pod.service_account, "pod": pod.name, "uid": pod.uid,
                  "aud": [audience], "iat": int(now), "exp": int(now + lifetime)}
        payload = _b64(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
        return f"{PREFIX}{payload}.{_b64(self._mac(payload))}"

    def verify(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The token's claims if it is genuine, current, for one of `audiences`, and its pod exists."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
            raise InvalidToken("not a token of this authority")
        payload, dot, signature = token[len(PREFIX):].partition(".")
        try:
            given = _unb64(signature)
            _unb64(payload)
        except (binascii.Error, ValueError):
            raise InvalidToken("malformed token") from None
        if not dot or not hmac.compare_digest(given, self._mac(payload)):
            raise InvalidToken("invalid signature")
        claims = _claims(payload)
        now = self._clock()
        if claims["exp"] <= now:
            raise InvalidToken("token expired")
        if claims["iat"] > now + CLOCK_SKEW:
            raise InvalidToken("token issued in the future")
        if not set(claims["aud"]) & set(audiences):
            raise InvalidToken("token audiences invalid")
        pod = self._pods(claims["ns"], claims["pod"])
        if pod is None or not hmac.compare_digest(pod.uid, claims["uid"]) or pod.service_account != claims["sa"]:
            raise InvalidToken(f"pod {claims['ns']}/{claims['pod']} with that uid no longer exists")
        return claims

    async def review(self, body: dict[str, Any]) -> dict[str, Any]:
        """A TokenReview answered as the API server would (the TokenAuthenticator's review function)."""
        spec = body.get("spec") if isinstance(body, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        audiences = [a for a in spec.get("audiences") or [] if isinstance(a, str)]
        answer = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        try:
            claims = self.verify(spec.get("token", ""), audiences)
        except InvalidToken as exc:
            return {**answer, "status": {"authenticated": False, "error": str(exc)}}
        return {**answer, "status": {
            "authenticated": True,
            "audiences": [a for a in claims["aud"] if a in audiences],
            "user": {
                "username": f"{SA_PREFIX}{claims['ns']}:{claims['sa']}",
                "extra": {POD_NAME_EXTRA: [claims["pod"]], POD_UID_EXTRA: [claims["uid"]]},
            },
        }}


def _claims(payload: str) -> dict[str, Any]:
    try:
        claims = json.loads(_unb64(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidToken("malformed claims") from None
    strings = ("ns", "sa", "pod", "uid")
    if (not isinstance(claims, dict) or not all(isinstance(claims.get(k), str) for k in strings)
            or not all(isinstance(claims.get(k), int) and not isinstance(claims.get(k), bool) for k in ("iat", "exp"))
            or not isinstance(claims.get("aud"), list) or not all(isinstance(a, str) for a in claims["aud"])):
        raise InvalidToken("malformed claims")
    return claims


class AdminToken:
    """The bearer token of the admin endpoints: random, in a 0600 file, compared in constant time."""

    def __init__(self, path: Path):
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        if len(value) < 32:
            value = secrets.token_urlsafe(32)
            write_private(path, value.encode() + b"\n")
        self._digest = hashlib.sha256(value.encode()).digest()

    def allows(self, authorization: str | None) -> bool:
        token = bearer_token(authorization)
        if token is None:
            return False
        given = hashlib.sha256(token.encode()).digest()
        return hmac.compare_digest(given, self._digest)
