"""A small async Kubernetes API client for the few calls kopf does not make for us.

Secrets (CA, PSKs, remote trust), TokenReviews and webhook configurations. The
credentials come from the same place kopf's login handler takes them
(`load_connection`): in-cluster ServiceAccount, else the kubeconfig named by
$KUBECONFIG (read at call time, not import time).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

#: Server-side end of one watch request; the client then resumes from the last resourceVersion.
WATCH_SECONDS = 300
#: Largest watch event line read; a bigger object ends the watch (and is re-read by the next list).
MAX_EVENT_BYTES = 1 << 20


class KubeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Conflict(KubeError):
    pass


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None = None
    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    insecure: bool = False
    default_namespace: str | None = None


def load_connection() -> Connection:
    import kubernetes.client
    import kubernetes.config

    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        path = os.environ.get("KUBECONFIG", os.path.expanduser("~/.kube/config")).split(os.pathsep)[0]
        kubernetes.config.load_kube_config(config_file=path, client_configuration=config)
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    token = header.split(" ", 1)[-1] if header else None
    return Connection(
        server=config.host.rstrip("/"),
        token=token,
        ca_path=config.ssl_ca_cert,
        cert_path=config.cert_file,
        key_path=config.key_file,
        insecure=not config.verify_ssl,
    )


def decode_secret_data(secret: dict[str, Any]) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


def resource_version(obj: dict[str, Any]) -> str:
    """The object's metadata.resourceVersion: what a conditional write names as its precondition."""
    version = (obj.get("metadata") or {}).get("resourceVersion")
    if not isinstance(version, str) or not version:
        raise KubeError(500, "the object carries no resourceVersion to write against")
    return version


def encode_secret_data(data: dict[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in data.items()}


class KubeClient:
    def __init__(self, connection: Connection):
        self.connection = connection
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.connection.server.startswith("https"):
            return False
        if self.connection.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        context = ssl.create_default_context(cafile=self.connection.ca_path)
        if self.connection.cert_path:
            context.load_cert_chain(self.connection.cert_path, self.connection.key_path)
        return context

    async def _session_(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self.connection.token:
                headers["Authorization"] = f"Bearer {self.connection.token}"
            self._session = aiohttp.ClientSession(
                base_url=self.connection.server + "/", headers=headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        session = await self._session_()
        headers = {"Content-Type": content_type} if body is not None else {}
        async with session.request(method, path.lstrip("/"), json=body, headers=headers) as response:
            if response.status == 404:
                return None
            payload = await response.json(content_type=None) if response.content_length != 0 else None
            if response.status == 409:
                raise Conflict(409, str((payload or {}).get("message", "conflict")))
            if response.status >= 400:
                message = payload.get("message", "") if isinstance(payload, dict) else str(payload)
                raise KubeError(response.status, message)
            return payload

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self._call("GET", path)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", path, body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return await self._call("PATCH", path, body, "application/merge-patch+json")

    async def watch(self, path: str, resource_version: str,
                    field_selector: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Watch events of a collection from `resource_version` until the server ends the stream."""
        session = await self._session_()
        params = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(WATCH_SECONDS)}
        if field_selector is not None:
            params["fieldSelector"] = field_selector
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=WATCH_SECONDS + 30)
        async with session.get(path.lstrip("/"), params=params, timeout=timeout,
                               read_bufsize=MAX_EVENT_BYTES // 2) as response:
            if response.status >= 400:
                raise KubeError(response.status, (await response.text())[:200])
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise KubeError(500, "watch event is not an object")
                    yield event

    # ---- typed helpers ------------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")

    async def create_secret(self, namespace: str, name: str, data: dict[str, bytes],
                            labels: dict[str, str] | None = None,
                            owner: dict[str, Any] | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
        if owner is not None:
            metadata["ownerReferences"] = [owner]
        return await self.create(f"/api/v1/namespaces/{namespace}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": metadata, "data": encode_secret_data(data),
        })

    async def update_secret_data(self, namespace: str, name: str, data: dict[str, bytes],
                                 expected: dict[str, Any] | None = None) -> None:
        """Replace the Secret's data. With `expected` (the Secret as read before deciding what to
        write), only if nobody wrote it since: its resourceVersion is the patch's precondition,
        and Conflict says the Secret changed (or is gone): read it again and decide again."""
        # Merge patch: keys absent from `data` but present before are removed explicitly.
        current = expected if expected is not None else await self.read_secret(namespace, name) or {}
        patch: dict[str, Any] = {key: None for key in (current.get("data") or {}) if key not in data}
        patch.update(encode_secret_data(data))
        body: dict[str, Any] = {"data": patch}
        if expected is not None:
            body["metadata"] = {"resourceVersion": resource_version(expected)}
        written = await self.merge_patch(f"/api/v1/namespaces/{namespace}/secrets/{name}", body)
        if written is None and expected is not None:
            raise Conflict(404, f"Secret {namespace}/{name} is gone")

    async def read_config_data(self, kind: str, namespace: str, name: str, key: str) -> bytes | None:
        plural = "secrets" if kind == "Secret" else "configmaps"
        obj = await self.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if obj is None:
            return None
        if kind == "Secret":
            return decode_secret_data(obj).get(key)
        value = (obj.get("data") or {}).get(key)
        return None if value is None else value.encode()
