"""Secrets in files: the KubeClient calls OperatorRuntime makes, backed by a state directory.

Each Secret is ``<dir>/secrets/<namespace>/<name>.json`` holding what the API
server would (metadata, base64 data), written atomically with mode 0600 in
0700 directories, so the mesh CA and the PSKs survive a restart. ConfigMaps
(remote trust bundles) come from the standalone YAML instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ipsec_mesh.meshapi import PeerMapError
from ipsec_mesh.meshapi.identity import check_dns_name, check_label

from ..controller.index import PodInfo, PodKey
from ..controller.kube import Conflict, decode_secret_data, encode_secret_data, resource_version

MAX_SECRET_BYTES = 1024 * 1024
MAX_INCARNATIONS_BYTES = 16 * 1024 * 1024


class SecretStoreError(Exception):
    """A Secret file is unreadable or malformed, or a name cannot be a file name."""


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, rename), created with `mode`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # the umask may have narrowed (or an old file widened) it
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class FileSecretStore:
    def __init__(self, directory: str | Path, config_maps: Mapping[tuple[str, str], Mapping[str, str]] | None = None):
        self.directory = Path(directory) / "secrets"
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.config_maps = dict(config_maps or {})

    def _path(self, namespace: str, name: str) -> Path:
        try:  # DNS names cannot hold "/" or start with ".": safe as path components
            return self.directory / check_label(namespace, "namespace") / f"{check_dns_name(name, 'name')}.json"
        except PeerMapError as exc:
            raise SecretStoreError(str(exc)) from None

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        path = self._path(namespace, name)
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_SECRET_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SecretStoreError(f"cannot read {path}: {exc.strerror}") from None
        try:
            secret = json.loads(raw)
            if len(raw) > MAX_SECRET_BYTES or not isinstance(secret, dict) or not isinstance(secret.get("data"), dict):
                raise ValueError("not a Secret document")
            decode_secret_data(secret)
            # Files written before resourceVersions were kept count as version 0.
            metadata = secret.setdefault("metadata", {})
            if not isinstance(metadata, dict) or not str(metadata.setdefault("resourceVersion", "0")).isdigit():
                raise ValueError("bad metadata")
        except (ValueError, TypeError) as exc:
            raise SecretStoreError(f"{path} is not a usable Secret: {exc}") from None
        return secret

    async def create_secret(self, namespace: str, name: str, data: dict[str, bytes],
                            labels: dict[str, str] | None = None,
                            owner: dict[str, Any] | None = None) -> dict[str, Any]:
        if await self.read_secret(namespace, name) is not None:
            raise Conflict(409, f"Secret {namespace}/{name} exists")
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
        if owner is not None:
            metadata["ownerReferences"] = [owner]
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata,
                  "data": encode_secret_data(data)}
        self._write(namespace, name, secret)
        return secret

    async def update_secret_data(self, namespace: str, name: str, data: dict[str, bytes],
                                 expected: dict[str, Any] | None = None) -> None:
        """As KubeClient's: with `expected`, Conflict unless the file is still the version read."""
        secret = await self.read_secret(namespace, name)
        if secret is None:
            if expected is not None:
                raise Conflict(404, f"Secret {namespace}/{name} is gone")
            raise SecretStoreError(f"Secret {namespace}/{name} does not exist")
        if expected is not None and resource_version(expected) != resource_version(secret):
            raise Conflict(409, f"Secret {namespace}/{name} changed since it was read")
        secret["data"] = encode_secret_data(data)
        self._write(namespace, name, secret)

    def delete_secret(self, namespace: str, name: str) -> bool:
        """What Kubernetes' garbage collector does for a PSK Secret once its peering is gone."""
        path = self._path(namespace, name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _write(self, namespace: str, name: str, secret: dict[str, Any]) -> None:
        metadata = secret["metadata"]
        metadata["resourceVersion"] = str(int(metadata.get("resourceVersion", "0")) + 1)
        write_private(self._path(namespace, name), json.dumps(secret, sort_keys=True).encode())

    async def read_config_data(self, kind: str, namespace: str, name: str, key: str) -> bytes | None:
        if kind == "Secret":
            secret = await self.read_secret(namespace, name)
            return None if secret is None else decode_secret_data(secret).get(key)
        value = self.config_maps.get((namespace, name), {}).get(key)
        return None if value is None else value.encode()

    async def get(self, path: str) -> dict[str, Any] | None:
        return None  # no webhook configurations (or anything else) to read without Kubernetes

    async def close(self) -> None:
        pass


class PodIncarnations:
    """Each pod's uid, one per incarnation, kept in ``<dir>/pods.json`` (0600) across restarts.

    Tokens are bound to the uid, so a new uid is what ends every token of an earlier pod
    of the same name. A pod keeps its uid while it stays in the YAML with the same
    addresses and ServiceAccount (what cannot change during a Kubernetes pod's life);
    removing it from the YAML (on a reload, or while the operator is stopped) or
    changing either gives the next pod of that name a fresh random uid.
    """

    def __init__(self, path: Path):
        self.path = path
        self._records: dict[str, dict[str, Any]] = {}
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_INCARNATIONS_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SecretStoreError(f"cannot read {path}: {exc.strerror}") from None
        try:
            records = json.loads(raw)
            if len(raw) > MAX_INCARNATIONS_BYTES or not isinstance(records, dict) or not all(
                    isinstance(r, dict) and isinstance(r.get("uid"), str) for r in records.values()):
                raise ValueError("not a map of pod records")
        except ValueError as exc:
            raise SecretStoreError(f"{path} is unusable ({exc}); remove it to give every pod a new uid") from None
        self._records = records

    def assign(self, pods: tuple[PodInfo, ...]) -> tuple[PodInfo, ...]:
        """`pods` with their uids; forgets every pod not among them (its tokens never work again)."""
        records: dict[str, dict[str, Any]] = {}
        out = []
        for pod in pods:
            name = _record_key(pod.key)
            record = {"sa": pod.service_account, "ips": list(pod.ips)}
            known = self._records.get(name)
            same = known is not None and known.get("sa") == record["sa"] and known.get("ips") == record["ips"]
            records[name] = {**record, "uid": known["uid"] if same else str(uuid.uuid4())}
            out.append(dataclasses.replace(pod, uid=records[name]["uid"]))
        if records != self._records:
            write_private(self.path, json.dumps(records, sort_keys=True).encode())
            self._records = records
        return tuple(out)


def _record_key(key: PodKey) -> str:
    return f"{key[0]}/{key[1]}"
