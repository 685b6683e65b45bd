"""The cluster around the processes under test: a node, pods, an API server, the image venvs.

- node: a network namespace with a bridge (10.244.0.1); each pod a namespace on it with eth0.
- API server: kmock over TLS on the node's address, in the node's namespace (as the
  `kubernetes` Service's endpoint), with the TokenReview authority of tests/operator.
- the image venvs: docker/build-venv.sh run on a copy of what the Dockerfile COPYs, each role
  from the registry, pinned and hash-checked, exactly as the image build does.
Everything network lives in namespaces this process made; names carry the pid.
"""

from __future__ import annotations

import datetime
import itertools
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.test_utils
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ipsec_mesh_operator.netns import (
    IFNAME_MAX,
    add_netns,
    add_veth,
    delete_netns,
    enter_netns,
    in_netns,
    ip,
    stop_process,
    unique_name,
)
from tests.support import fake_tokens, pki
from tests.support.kube_harness import KubeHarness

ROOT = Path(__file__).resolve().parents[2]
NODE_IP = "10.244.0.1"
API_PORT = 6443
PREFIX = 24
# What the Dockerfile copies into its build stages.
BUILD_CONTEXT = ("docker", "pyproject.toml", "README.md", "sidecar", "operator")


# ---- image venvs -------------------------------------------------------------------


def build_image_venvs(directory: Path) -> dict[str, Path]:
    """Both roles' venvs, built in parallel by docker/build-venv.sh; world-readable (uids without passwd)."""
    contexts = {role: directory / f"context-{role}" for role in ("operator", "sidecar")}  # a stage each, as in the Dockerfile
    for context in contexts.values():
        context.mkdir(parents=True)
        for name in BUILD_CONTEXT:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(source, context / name)
    env = {**os.environ, "PYTHON": sys.base_prefix + "/bin/python3", "PIP_NO_CACHE_DIR": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    venvs = {role: directory / role for role in ("operator", "sidecar")}
    for step in ("deps", "project"):
        running = []
        for role, dest in venvs.items():
            log = open(directory / f"{role}-{step}.log", "wb")
            running.append((role, log, subprocess.Popen(["docker/build-venv.sh", step, role, str(dest)], cwd=contexts[role],
                                                        env=env, stdout=log, stderr=subprocess.STDOUT)))
        codes = {}
        for role, log, process in running:  # all of them, before anything is reported or removed
            codes[role] = process.wait(600)
            log.close()
        for role, code in codes.items():
            if code:
                raise RuntimeError(f"build-venv.sh {step} {role} failed:\n"
                                   + (directory / f"{role}-{step}.log").read_text()[-4000:])
    crds = venvs["operator"] / "share" / "crds"  # COPY crds /opt/ipsec-mesh/share/crds
    crds.mkdir(parents=True)
    shutil.copy2(ROOT / "crds" / "ipsecpeerings.yaml", crds)
    for path in [directory, *directory.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    return venvs


def installed(venv: Path) -> dict[str, str]:
    """name -> version of what a venv holds (read from its metadata; its pip is gone)."""
    out = {}
    for meta in (venv / "lib").glob("python3*/site-packages/*.dist-info/METADATA"):
        fields = dict(line.split(": ", 1) for line in meta.read_text(errors="replace").splitlines()[:3]
                      if ": " in line)
        out[fields["Name"].lower().replace("_", "-")] = fields["Version"]
    return out


# ---- network -------------------------------------------------------------------------


_numbers = itertools.count(2)


@dataclass
class Node:
    netns: str = field(default_factory=lambda: unique_name("dn"))
    pods: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        add_netns(self.netns)
        ip("link", "add", "br0", "type", "bridge", netns=self.netns)
        ip("addr", "add", f"{NODE_IP}/{PREFIX}", "dev", "br0", netns=self.netns)
        ip("link", "set", "br0", "up", netns=self.netns)

    def add_pod(self) -> tuple[str, str]:
        """A pod network namespace on the bridge: (netns, pod IP)."""
        number = next(_numbers)
        name, address, veth = unique_name("dp"), f"10.244.0.{number}", unique_name("dv", limit=IFNAME_MAX)
        add_netns(name)
        self.pods.append(name)
        add_veth(self.netns, veth, name, "eth0", up=False)  # the node's end goes up once on the bridge
        ip("link", "set", veth, "master", "br0", "up", netns=self.netns)
        for args in (("link", "set", "eth0", "up"), ("addr", "add", f"{address}/{PREFIX}", "dev", "eth0"),
                     ("route", "add", "default", "via", NODE_IP)):
            ip(*args, netns=name)
        return name, address

    def close(self) -> None:
        for name in [*self.pods, self.netns]:
            delete_netns(name)


def http(netns: str, url: str, *, data: bytes | None = None, context: ssl.SSLContext | None = None,
         headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, bytes]:
    """One HTTP(S) request from inside `netns` (the kubelet's probes, the API server's webhook calls)."""
    def call():
        request = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
    return in_netns(netns, call, timeout=timeout + 5)


def probe(netns: str, ip: str, container: dict[str, Any], probe_spec: dict[str, Any]) -> int:
    """An httpGet probe as written in the spec; the status code, 0 when nothing answers."""
    from tests.deploy.kubelet import port_number

    get = probe_spec["httpGet"]
    scheme = get.get("scheme", "HTTP").lower()
    url = f"{scheme}://{get.get('host', ip)}:{port_number(container, get['port'])}{get.get('path', '/')}"
    context = ssl._create_unverified_context() if scheme == "https" else None  # the kubelet does not verify
    try:
        return http(netns, url, context=context, timeout=probe_spec.get("timeoutSeconds", 1) + 1)[0]
    except OSError:
        return 0


def wait_until(what: str, check, process: subprocess.Popen, log: Path, timeout: float = 60) -> Any:
    """Poll `check` (bounded in time); fail with the process's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}:\n{log.read_text()[-6000:]}")
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout:.0f} s:\n{log.read_text()[-6000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s (the operator answers open long polls first)."""
    stop_process(process, grace=20)


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


# ---- the API server ----------------------------------------------------------------------


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = pki.build_certificate(subject=pki.name("kmock CA"), public_key=ca_key.public_key(),
                               issuer_name=pki.name("kmock CA"), issuer_key=ca_key, ca=True, path_length=0,
                               not_before=now - datetime.timedelta(minutes=5), not_after=now + datetime.timedelta(days=1),
                               key_usage=pki.key_usage(key_cert_sign=True))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.build_certificate(subject=pki.name("kubernetes"), public_key=key.public_key(),
                                 issuer_name=ca.subject, issuer_key=ca_key,
                                 not_before=now - datetime.timedelta(minutes=5), not_after=now + datetime.timedelta(days=1),
                                 key_usage=pki.key_usage(digital_signature=True),
                                 sans=pki.subject_alt_names(dns=["kubernetes.default.svc"], ips=[NODE_IP]))
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(pki.key_pem(key))
    return paths


class ApiServer(KubeHarness):
    """kmock over TLS on the node's address, inside the node's namespace."""

    def __init__(self, node: Node, directory: Path) -> None:
        self.netns = node.netns
        self.ca_path, cert, key = _tls_files(directory)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)

        class TlsServer(aiohttp.test_utils.RawTestServer):
            def __init__(self, handler, *, host, port):
                super().__init__(handler, host=host, port=API_PORT, scheme="https")

            async def start_server(self, loop=None, **kwargs):
                await super().start_server(loop=loop, ssl=server_context, **kwargs)

        super().__init__(host=NODE_IP, server_cls=TlsServer,
                         client_context=ssl.create_default_context(cafile=str(self.ca_path)))

    def _run(self) -> None:
        enter_netns(self.netns)  # this thread only: kmock listens in the node
        super()._run()

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        return in_netns(self.netns, super().request, method, path, body, content_type, timeout=15)

    def service_account_volume(self, directory: Path, namespace: str) -> Path:
        """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text("service-account-token")  # kmock does not authenticate
        (directory / "namespace").write_text(namespace)
        shutil.copy2(self.ca_path, directory / "ca.crt")
        return directory

    @staticmethod
    def service_env() -> dict[str, str]:
        """The `kubernetes` Service's variables, as the kubelet sets them in every container."""
        return {"KUBERNETES_SERVICE_HOST": NODE_IP, "KUBERNETES_SERVICE_PORT": str(API_PORT),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(API_PORT), "KUBERNETES_PORT": f"tcp://{NODE_IP}:{API_PORT}"}


def tokenreviews(emulator) -> None:
    emulator["post /apis/authentication.k8s.io/v1/tokenreviews"] << fake_tokens.review


def world_readable_tempdir(prefix: str, parent: str | None = None) -> Path:
    """A directory uid 65532 can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path

