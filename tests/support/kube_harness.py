"""A kmock Kubernetes emulator running in its own thread, for operator tests.

KopfRunner runs the operator in a thread with its own event loop; the test body
is synchronous. The emulator gets a third thread so neither can block it. The
test talks to it over HTTP (as kubectl would) and reads `objects` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
from kmock._internal import enums as kmock_enums
from kmock._internal import k8s as kmock_k8s
from kmock._internal import parsing as kmock_parsing
from kmock._internal import rendering as kmock_rendering

PEERINGS = "ipsec-mesh.io/v1alpha1/ipsecpeerings"


def _parse_path_with_namespaces(path: str, _parse=kmock_parsing.parse_path) -> kmock_parsing.ParsedPath:
    """kmock 0.8 reads `/api/v1/namespaces[/NAME]` as a namespace prefix with nothing after it
    (ValueError, answered 500), so the Namespace resource itself cannot be listed, watched or
    fetched; the operator lists and watches it. Parse those two paths as the resource."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (3, 4):
        return kmock_parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _parse(path)


kmock_parsing.parse_path = _parse_path_with_namespaces


class VersionedEmulator(kmock.KubernetesEmulator):
    """kmock with the API server's optimistic concurrency, which kmock 0.8 leaves out: every
    create and write stores the next `metadata.resourceVersion`, and a write whose body names
    another resourceVersion than the stored one is refused with 409 Conflict."""

    _versions = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        #: Held from the precondition check to the stored write, so that two writers cannot both pass it.
        self.write_lock = asyncio.Lock()

    async def _handle(self, request: kmock_rendering.Request) -> Any:
        if request.resource is None or request.action not in (kmock_enums.action.CREATE, kmock_enums.action.UPDATE) \
                or not isinstance(request.data, dict):
            return await super()._handle(request)
        async with self.write_lock:
            metadata = request.data.setdefault("metadata", {})
            if request.action == kmock_enums.action.UPDATE:
                key = (request.resource, request.namespace, request.name)
                stored = self._objects[key].get("metadata", {}).get("resourceVersion") \
                    if key in self._objects and not self._objects[key].deleted else None
                wanted = metadata.get("resourceVersion")
                if wanted is not None and wanted != stored:
                    return await self._render_error(kmock_k8s.KubernetesObjectConflictError(
                        reason="Conflict", message="the object has been modified; apply your changes to the latest "
                                                   "version and try again"))
            metadata["resourceVersion"] = str(next(self._versions))
            return await super()._handle(request)


class KubeHarness:
    """`host`/`server_cls`: where kmock listens and its aiohttp test server class (tests/deploy serves
    it over TLS in a network namespace); `client_context`: how request() verifies that TLS."""

    def __init__(self, host: str = "127.0.0.1", server_cls: type | None = None,
                 client_context: ssl.SSLContext | None = None) -> None:
        self.host, self.server_cls, self.client_context = host, server_cls, client_context
        self.loop = asyncio.new_event_loop()
        self.emulator: kmock.KubernetesEmulator | None = None
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._setup: list[Callable[[kmock.KubernetesEmulator], None]] = []
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def start(self, setup: Callable[[kmock.KubernetesEmulator], None] | None = None) -> None:
        if setup is not None:
            self._setup.append(setup)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        options = {"server_cls": self.server_cls} if self.server_cls is not None else {}
        async with VersionedEmulator() as emulator, kmock.Server(emulator, host=self.host, **options) as server:
            emulator.resources.load_bundled()
            emulator.resources[PEERINGS] = kmock.ResourceInfo(
                kind="IPsecPeering", singular="ipsecpeering", shortnames={"ipp"},
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources={"status"}, namespaced=True,
            )
            for setup in self._setup:
                setup(emulator)
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` in the emulator's loop (for anything that touches its state)."""
        async def wrapper() -> Any:
            return function()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    # ---- kubectl-like helpers ---------------------------------------------

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.client_context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, body: dict) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: dict) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def write_kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": "operator-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator", "namespace": "default"}}],
        }))
        return path


@contextlib.contextmanager
def running_kube(setup: Callable[[kmock.KubernetesEmulator], None] | None = None) -> Iterator[KubeHarness]:
    harness = KubeHarness()
    harness.start(setup)
    try:
        yield harness
    finally:
        harness.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until `predicate` returns something truthy; bounded in time."""
    import time

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (KeyError, TypeError, IndexError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}: last={last!r}")


def first_reads_meet(clients: list[Any], timeout: float = 30.0) -> None:
    """Make each client's first `read_secret` wait until every client has made its first: all of them
    decide on the same version of a Secret before any writes it (the race a write precondition settles).
    Later reads (a re-read after a conflict) go on at once."""
    barrier, waited = asyncio.Barrier(len(clients)), set()
    for client in clients:
        read = client.read_secret

        async def read_then_wait(namespace: str, name: str, read: Any = read, client: Any = client) -> Any:
            secret = await read(namespace, name)
            if id(client) not in waited:
                waited.add(id(client))
                await asyncio.wait_for(barrier.wait(), timeout)
            return secret
        client.read_secret = read_then_wait


@contextlib.asynccontextmanager
async def replicas(make: Callable[[str], Any], count: int = 2) -> AsyncIterator[tuple[KubeHarness, list[Any]]]:
    """`count` operator runtimes, each `make(api_url)`, against one kmock API server; their clients closed after."""
    with running_kube() as kube:
        runtimes = [make(kube.url) for _ in range(count)]
        try:
            yield kube, runtimes
        finally:
            for runtime in runtimes:
                await runtime.kube.close()
