"""A stand-in for the API server's token authority: HMAC-signed tokens, answered through TokenReview.

`issue()` mints what a kubelet would project into a pod; `review()` is the
kmock reaction for POST .../tokenreviews and applies the rules a real API
server does: signature, expiry, audience, pod binding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

SIGNING_KEY = secrets.token_bytes(32)


def issue(namespace: str, service_account: str, pod: str, pod_uid: str, audience: str = "ipsec-mesh",
          lifetime: float = 3600, key: bytes = SIGNING_KEY) -> str:
    claims = {"ns": namespace, "sa": service_account, "pod": pod, "uid": pod_uid, "aud": [audience],
              "exp": time.time() + lifetime}
    payload = _b64(json.dumps(claims).encode())
    return f"{payload}.{_b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # unpadded, as in a JWT


def review(request: Any) -> dict[str, Any]:
    body = request.data or {}
    spec = body.get("spec") or {}
    token, audiences = spec.get("token", ""), spec.get("audiences") or []
    answer = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
    payload, _, signature = token.partition(".")
    expected = _b64(hmac.new(SIGNING_KEY, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature, expected):
        return {**answer, "status": {"authenticated": False, "error": "invalid bearer token"}}
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    if claims["exp"] < time.time():
        return {**answer, "status": {"authenticated": False, "error": "token expired"}}
    matching = [a for a in claims["aud"] if a in audiences] if audiences else claims["aud"]
    if not matching:
        return {**answer, "status": {"authenticated": False, "error": "token audiences invalid"}}
    return {**answer, "status": {
        "authenticated": True,
        "audiences": matching,
        "user": {
            "username": f"system:serviceaccount:{claims['ns']}:{claims['sa']}",
            "extra": {
                "authentication.kubernetes.io/pod-name": [claims["pod"]],
                "authentication.kubernetes.io/pod-uid": [claims["uid"]],
            },
        },
    }}
