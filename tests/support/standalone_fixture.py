"""A standalone operator over a YAML file in a temporary directory, serving HTTPS on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ipsec_mesh.meshapi import MeshApiClient
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.standalone import StandaloneOperator

TRUST_DOMAIN = "mesh.test"
MESH = {
    "trustDomain": TRUST_DOMAIN,
    "pods": [
        {"name": "web", "namespace": "shop", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["10.0.0.1"]},
        {"name": "db", "namespace": "shop", "serviceAccount": "db", "labels": {"app": "db"}, "ips": ["10.0.0.2"]},
        {"name": "cache", "namespace": "shop", "labels": {"app": "cache"}, "ips": ["10.0.0.3"]},
    ],
    "peerings": [
        {"name": "web-db", "namespace": "shop", "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "peers": [{"podSelector": {"matchLabels": {"app": "db"}}}]}},
        {"name": "web-cache", "namespace": "shop", "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "peers": [{"podSelector": {"matchLabels": {"app": "cache"}}}],
            "authentication": {"type": "psk"}}},
    ],
}


def write_mesh(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def make_csr(identity: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def client_for(operator: StandaloneOperator, namespace: str, pod: str) -> MeshApiClient:
    """What a sidecar does: the API URL, its token file, ca-bundle.pem."""
    bundle = (operator.state_dir / "ca-bundle.pem").read_text()
    url = (operator.state_dir / "api-url").read_text().strip()
    return MeshApiClient(url, ca_bundle=bundle, token_file=operator.token_path(namespace, pod))


@contextlib.asynccontextmanager
async def running(tmp_path: Path, document: dict[str, Any] = MESH, base: OperatorConfig | None = None,
                  **kwargs: Any) -> AsyncIterator[StandaloneOperator]:
    config = tmp_path / "mesh.yaml"
    if not config.exists():
        write_mesh(config, document)
    base = base or OperatorConfig(key_check_interval=3600)
    operator = StandaloneOperator(config, tmp_path / "state", "127.0.0.1", 0, base_config=base, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(operator.run(stop))
    try:
        for _ in range(200):
            if (operator.state_dir / "api-url").exists() or task.done():
                break
            await asyncio.sleep(0.05)
        if task.done():
            task.result()
        yield operator
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
