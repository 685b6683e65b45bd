"""Issue 10: the standalone operator, as a process in a memory cgroup of the chart's limit, under load.

5,000 slow connections (half never start TLS, half finish it and send nothing) and 1,000
peer-map watches from one pod, while a legitimate sidecar bootstraps. The operator must stay
alive and under the limit, with the chart's defaults (no setting is lowered for the test).
Prints the memory it measured (docs/security-model.md quotes it).

What it asserts holds on a loaded machine too (load 12-30 on 2 cores): the watches are
streams, as the sidecar makes them, so a held one stays held for 150-300 s whatever the
pace of the others (long polls of 20 s let a late poll take a freed slot); and at most
WATCH_CONCURRENCY of them are in their TLS handshake at once, so their handshakes end
within the operator's 5 s handshake timeout even when each process gets a fifteenth of a
core (1,000 at once were all dropped there: none reached the per-pod bound).
"""

from __future__ import annotations

import asyncio
import resource
import ssl
import time

from ipsec_mesh.meshapi import MeshApiClient
from ipsec_mesh_operator.model.settings import OperatorConfig
from tests.operator.test_standalone_process import start_standalone, stop_standalone
from tests.support.memcg import MemoryCgroup
from tests.support.standalone_fixture import MESH, TRUST_DOMAIN, make_csr, write_mesh

CHART_LIMIT = 512 * 1024 * 1024
SLOW = 5000
POLLS = 1000
BATCH = 250
#: Watches opening at once (handshake, request, status line); held ones release their place.
WATCH_CONCURRENCY = 32


async def _open(host: str, port: int, context: ssl.SSLContext | None):
    try:
        return await asyncio.open_connection(host, port, ssl=context)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return None  # refused or evicted during the handshake: the bound at work


async def _watch(host: str, port: int, context: ssl.SSLContext, token: bytes, version: int,
                 pace: asyncio.Semaphore, held: list) -> int | None:
    """Open one peer-map stream as the sidecar does; its status, the connection kept while held (200)."""
    async with pace:
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            writer.write(f"GET /v1/peermap?watch=1&version={version}&wait=60 HTTP/1.1\r\nHost: mesh\r\n".encode()
                         + b"Authorization: Bearer " + token + b"\r\n\r\n")
            status = int((await asyncio.wait_for(reader.readline(), 60)).split(b" ")[1])
        except (OSError, ssl.SSLError, IndexError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            return None  # evicted or refused
    if status == 200:
        held.append(writer)  # a stream: it holds its slot until the test ends
    else:
        writer.close()
    return status


async def _bootstrap(url: str, bundle: str, state, pod: str) -> bool:
    """What a sidecar does at start (retrying as it would); True once it has a certificate and its map."""
    for _ in range(10):
        try:
            async with MeshApiClient(url, ca_bundle=bundle, token_file=state / f"pods/shop/{pod}/token") as client:
                await client.sign_csr(make_csr(f"{pod}.shop.pod.{TRUST_DOMAIN}"))
                await client.fetch_peer_map()
                return True
        except Exception:  # noqa: BLE001 - refused, evicted or 429: retry like the sidecar
            await asyncio.sleep(0.5)
    return False


async def test_the_operator_survives_slow_connections_and_long_polls_under_the_chart_limit(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOW + POLLS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, SLOW + POLLS + 1000), hard))
    write_mesh(tmp_path / "mesh.yaml", MESH)
    cgroup = MemoryCgroup(f"ipsec-mesh-load-{time.monotonic_ns()}", CHART_LIMIT)
    process = start_standalone(tmp_path, preexec_fn=cgroup.enter)
    writers = []
    try:
        state = tmp_path / "state"
        url = (state / "api-url").read_text().strip()
        bundle = (state / "ca-bundle.pem").read_text()
        host, port = url.removeprefix("https://").rsplit(":", 1)
        context = ssl.create_default_context(cadata=bundle)
        assert await _bootstrap(url, bundle, state, "web")  # warm: first requests, imports
        baseline = cgroup.current()

        for start in range(0, SLOW, BATCH):
            tls = context if start >= SLOW // 2 else None
            opened = await asyncio.gather(*(_open(host, int(port), tls) for _ in range(BATCH)))
            writers.extend(pair[1] for pair in opened if pair is not None)
        held = cgroup.current()

        token = (state / "pods/shop/web/token").read_bytes().strip()
        async with MeshApiClient(url, ca_bundle=bundle, token_file=state / "pods/shop/web/token") as client:
            version = (await client.fetch_peer_map()).version
        pace = asyncio.Semaphore(WATCH_CONCURRENCY)
        watches = asyncio.gather(*(_watch(host, int(port), context, token, version, pace, writers)
                                   for _ in range(POLLS)))
        legitimate = await _bootstrap(url, bundle, state, "db")
        statuses = await watches

        peak = cgroup.peak()
        print(f"\nbaseline {baseline / 2**20:.1f} MiB; with {SLOW} slow connections held "
              f"{held / 2**20:.1f} MiB; peak {peak / 2**20:.1f} MiB of {CHART_LIMIT / 2**20:.0f} MiB; "
              f"per connection {(held - baseline) / min(SLOW, OperatorConfig.max_connections) / 1024:.1f} KiB; "
              f"watches: {sorted((s, statuses.count(s)) for s in set(statuses) if s is not None)}, "
              f"{statuses.count(None)} dropped")
        assert process.poll() is None, (tmp_path / "operator.log").read_text()[-2000:]
        assert cgroup.oom_kills() == 0 and peak < CHART_LIMIT
        assert legitimate
        assert set(statuses) <= {200, 429, None}
        # max_requests_per_pod: at most 8 held at once (streams never end within the test), every other
        # answer a 429; most of them answered, not dropped (else the bound was never reached).
        assert 1 <= statuses.count(200) <= OperatorConfig.max_requests_per_pod
        assert statuses.count(429) >= POLLS // 2
    finally:
        for writer in writers:
            writer.transport.abort()
        stop_standalone(process)
        cgroup.remove()
