"""Issue 10: hostile requests to the mesh API and the webhooks (standalone operator, real HTTPS).

Numeric query parameters, inputs that used to raise (500 with a traceback), the per-pod
cap on concurrent requests, and log lines about misbehaving clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import subprocess
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ipsec_mesh_operator.model.settings import OperatorConfig
from tests.support.api_fixture import running_servers
from tests.support.standalone_fixture import TRUST_DOMAIN, running

WEB_ID = f"web.shop.pod.{TRUST_DOMAIN}"
NESTED = ("[" * 100_000 + "]" * 100_000).encode()


async def raw_request(operator, request: bytes, timeout: float = 20) -> tuple[int, bytes]:
    """One HTTP/1.1 request, written byte for byte over TLS; (status, body)."""
    url = (operator.state_dir / "api-url").read_text().strip()
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cadata=(operator.state_dir / "ca-bundle.pem").read_text())
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")]
        body = await asyncio.wait_for(reader.readexactly(length[0]), timeout) if length else b""
        return int(head.split(b" ")[1]), body
    finally:
        writer.close()


def get(path: str, token: bytes) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n".encode()
            + b"Authorization: Bearer " + token + b"\r\n\r\n")


def post(path: str, token: bytes, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n".encode() + b"Authorization: Bearer " + token + b"\r\n\r\n" + body)


def token_of(operator, pod: str = "web") -> bytes:
    return operator.token_path("shop", pod).read_bytes().strip()


def current_version(operator, pod: str = "web") -> int:
    return operator.runtime.index.version(("shop", pod))


BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e400", "1e3", "-1", "+1", " 1", "1 ", "1_0", "0x10", "",
               "\u0661", "\uff11", "1.", ".5", "1.5.5", "9" * 40]


@pytest.mark.parametrize("value", BAD_NUMBERS)
async def test_wait_and_version_accept_only_plain_ascii_numbers(tmp_path, value):
    async with running(tmp_path) as operator:
        token, version = token_of(operator), current_version(operator)
        status, _ = await raw_request(operator, get(f"/v1/peermap?version={version}&wait={quote(value)}", token))
        assert status == 400
        status, _ = await raw_request(operator, get(f"/v1/peermap?version={quote(value)}&wait=0", token))
        assert status == 400
        # What the sidecar sends (str() of an int and of a float) still works.
        for wait in ("0", "0.0", "0.30000000000000004"):
            status, _ = await raw_request(operator, get(f"/v1/peermap?version={version}&wait={wait}", token))
            assert status == 304


async def test_a_non_finite_wait_never_reaches_the_event_loop_timers(tmp_path):
    async with running(tmp_path) as operator:
        pod = ("shop", "web")
        for timeout in (math.nan, math.inf, -1.0):
            with pytest.raises(ValueError):
                await asyncio.wait_for(operator.runtime.wait_for_peer_map(pod, current_version(operator), timeout), 10)
        assert not any(math.isnan(handle.when()) for handle in asyncio.get_running_loop()._scheduled)


def _csr_with_two_san_extensions(directory) -> bytes:
    """cryptography refuses to build one; openssl writes any extension given as DER under its OID."""
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    san = x509.SubjectAlternativeName([x509.DNSName(WEB_ID)]).public_bytes().hex()
    (directory / "req.cnf").write_text(
        f"[req]\ndistinguished_name=dn\nreq_extensions=ext\nprompt=no\n[dn]\nCN={WEB_ID}\n"
        f"[ext]\nsubjectAltName=DNS:{WEB_ID}\n2.5.29.17=DER:{san}\n")
    return subprocess.run(["openssl", "req", "-new", "-key", str(directory / "key.pem"),
                           "-config", str(directory / "req.cnf")], check=True, capture_output=True).stdout


def test_the_crafted_csr_really_carries_two_san_extensions(tmp_path):
    with pytest.raises(x509.DuplicateExtension):
        x509.load_pem_x509_csr(_csr_with_two_san_extensions(tmp_path)).extensions  # noqa: B018


async def test_inputs_that_used_to_raise_get_a_4xx_and_at_most_one_log_line(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path) as operator:
        token = token_of(operator)
        cases = {
            "non-ASCII token": get("/v1/peermap?version=0&wait=0", b"ims1.\xff\xfe\xc3\xa9"),
            "non-UTF-8 admin token": get("/v1/admin/overview", b"\xff" * 40),
            "duplicate SAN": post("/v1/certificates", token,
                                  json.dumps({"csr": _csr_with_two_san_extensions(tmp_path).decode()}).encode()),
            "nested JSON (status)": post("/v1/status", token, NESTED[:60_000]),
            "nested JSON (certificates)": post("/v1/certificates", token, NESTED[:60_000]),
            "JSON with a lone surrogate": post("/v1/status", token, b'{"a": "\\ud800"}'),
        }
        for name, request in cases.items():
            caplog.clear()
            status, body = await raw_request(operator, request)
            assert 400 <= status < 500, (name, status, body)
            assert len(caplog.records) <= 1, (name, [r.getMessage() for r in caplog.records])
            assert not any(r.exc_info for r in caplog.records), name
            assert b"Traceback" not in body


async def test_the_webhook_answers_nested_json_with_400():
    async with running_servers() as (runtime, servers):
        context = ssl.create_default_context(cadata="".join(runtime.index.trust_bundle))
        reader, writer = await asyncio.open_connection("localhost", servers.ports["webhook"], ssl=context)
        body = NESTED[:200_000]
        writer.write(f"POST /mutate-pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        status = int((await asyncio.wait_for(reader.readline(), 20)).split(b" ")[1])
        writer.close()
        assert status == 400


async def test_log_lines_about_client_misbehaviour_are_rate_limited(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path) as operator:
        for i in range(60):
            status, _ = await raw_request(operator, get("/v1/peermap?version=0&wait=0", f"forged-{i}".encode()))
            assert status == 401
        about_clients = [r for r in caplog.records if r.name.startswith("ipsec_mesh_operator.api")]
        assert 1 <= len(about_clients) <= 10, len(about_clients)


async def test_one_pod_gets_429_beyond_its_concurrent_requests_and_others_still_poll(tmp_path):
    base = OperatorConfig(key_check_interval=3600, max_requests_per_pod=3)
    async with running(tmp_path, base=base) as operator:
        token, version = token_of(operator), current_version(operator)
        polls = [asyncio.ensure_future(raw_request(operator, get(f"/v1/peermap?version={version}&wait=2", token)))
                 for _ in range(12)]
        statuses = sorted([status for status, _ in await asyncio.gather(*polls)])
        assert statuses.count(304) == 3 and statuses.count(429) == 9, statuses
        status, _ = await raw_request(operator, get(f"/v1/peermap?version={current_version(operator, 'db')}&wait=0",
                                                    token_of(operator, "db")))
        assert status == 304
        assert operator.runtime.requests_in_flight == {}
