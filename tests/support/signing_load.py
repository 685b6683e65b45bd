"""Load for the mesh API's certificate signing: CSRs, tokens, and a load-generator process.

Shared by tests/operator/test_api_speed.py and bench/bench_mesh_api_signing.py. The
load runs in a separate (spawned) process so that the client's own crypto and HTTP
work is not billed to the server. It uses aiohttp with keep-alive connections, not the
sidecar's MeshApiClient (which opens one connection per request): the figure is the
cost of signing, not of TLS handshakes (a sidecar asks for a certificate once a day or so).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import ssl
import time

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.controller.token_review import Caller
from tests.support import fake_tokens
from tests.support.api_fixture import running_servers


def csr_for(identity: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


class KeepAliveSigner:
    """POST /v1/certificates for one pod over kept-alive HTTPS connections."""

    def __init__(self, url: str, context: ssl.SSLContext, token: str):
        self.url = url + "/v1/certificates"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                             headers={"Authorization": f"Bearer {token}"})

    async def sign(self, csr: bytes) -> None:
        async with self.session.post(self.url, json={"csr": csr.decode()}) as response:
            body = await response.json()
            if response.status != 200 or "certificate" not in body:
                raise RuntimeError(f"signing failed: HTTP {response.status}: {body}")


def load_generator(url, bundle, tokens, requests, concurrency, results) -> None:
    """Sign every (pod, csr) of `requests` with `concurrency` requests in flight; put ("ready"), then (done, wall)."""
    async def run():
        context = ssl.create_default_context(cadata=bundle)
        signers = [KeepAliveSigner(url, context, token) for token in tokens]
        for pod, signer in enumerate(signers):  # TLS handshakes and token reviews before the clock starts
            await signer.sign(requests[pod][1])
        results.put("ready")
        queue = list(requests)

        async def worker():
            done = 0
            while queue:
                pod, csr = queue.pop()
                await signers[pod].sign(csr)
                done += 1
            return done

        start = time.perf_counter()
        done = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
        results.put((done, time.perf_counter() - start))
        for signer in signers:
            await signer.session.close()

    asyncio.run(run())


async def measure_signing(requests: int, pods: int, concurrency: int) -> tuple[int, float, float, float]:
    """Run the load against a fresh operator runtime.

    Returns (signed, server CPU seconds, wall seconds, direct CPU seconds): the last is the CPU the
    same runtime spends signing the same CSRs when called directly (`OperatorRuntime.sign`: CSR
    checks, certificate built and signed, PEM), measured in the same process right after; the
    difference is what HTTPS, the token check and JSON add.
    """
    infos = [PodInfo("prod", f"web-{i}", f"uid-{i}", "web", {}, (f"10.0.{i // 256}.{i % 256}",)) for i in range(pods)]
    work = [(i % pods, csr_for(f"web-{i % pods}.prod.pod.cluster.local")) for i in range(requests)]
    tokens = [fake_tokens.issue("prod", "web", f"web-{i}", f"uid-{i}") for i in range(pods)]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    async with running_servers(infos) as (runtime, servers):
        url = f"https://localhost:{servers.ports['api']}"
        process = context.Process(target=load_generator, args=(
            url, "".join(runtime.index.trust_bundle), tokens, work, concurrency, results))
        process.start()
        try:
            ready = await asyncio.to_thread(results.get, True, 60)
            if ready != "ready":
                raise RuntimeError(f"load generator: {ready!r}")
            cpu_start = time.process_time()
            done, wall = await asyncio.to_thread(results.get, True, 120)
            cpu = time.process_time() - cpu_start
        finally:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
        callers = [Caller(info.namespace, info.service_account, info.name, info.uid) for info in infos]
        direct_start = time.process_time()
        for pod, csr in work:
            runtime.sign(callers[pod], csr)
        direct = time.process_time() - direct_start
    return done, cpu, wall, direct
