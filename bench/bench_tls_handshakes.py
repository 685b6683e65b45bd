"""How much a client that only makes TLS handshakes costs the operator, and what others see meanwhile.

A standalone operator process on loopback (`ipsec-mesh standalone`, the product's mesh API with
its ConnectionPool). `--processes` attacker processes open TLS connections to the mesh API as
fast as they can, `--concurrency` at a time in all, and drop each one once its handshake is
done (no request, no certificate check: the cheapest client); with `--openssl`, the
attackers are `openssl s_time -new` processes instead (C, one handshake at a time each). Meanwhile a victim in this process sends
`GET /healthz` on one kept-alive TLS connection, one after another, and records each
round trip; another victim opens a new TLS connection per request (a sidecar's first
contact after a restart). Windows without and with the attack alternate, `--rounds` times.
Reported per window: handshakes completed per second, the operator's CPU per handshake
(/proc/<pid>/stat), and the victims' round trips p50/p99/max.

    .venv/bin/python bench/bench_tls_handshakes.py [--seconds 5] [--rounds 2] [--concurrency 8 64 256]
        [--processes 1] [--openssl]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sidecar"), str(ROOT / "operator"), str(ROOT)]

from machine import describe  # noqa: E402

from tests.support.standalone_fixture import MESH  # noqa: E402
from tests.support.watcher_load import percentile  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def attacker(host: str, port: int, concurrency: int, seconds: float, result) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def one(deadline: float, counts: list[int]) -> None:
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 10)
            except (OSError, TimeoutError, ssl.SSLError):
                counts[1] += 1
                continue
            counts[0] += 1
            writer.transport.abort()

    async def run() -> list[int]:
        counts = [0, 0]
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(one(deadline, counts) for _ in range(concurrency)))
        return counts

    result.send(asyncio.run(run()))


async def victims(host: str, port: int, bundle: str, seconds: float) -> tuple[list[float], list[float]]:
    context = ssl.create_default_context(cadata=bundle)
    request = b"GET /healthz HTTP/1.1\r\nHost: mesh\r\n\r\n"
    kept: list[float] = []
    fresh: list[float] = []
    deadline = time.monotonic() + seconds

    async def keep_alive() -> None:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                writer.write(request)
                await reader.readuntil(b"\r\n\r\nok")
                kept.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)
        finally:
            writer.close()

    async def new_connections() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context), 30)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n\r\n")
            await reader.read()
            writer.close()
            fresh.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)

    await asyncio.gather(keep_alive(), new_connections())
    return kept, fresh


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"p50 {percentile(values, 0.5) * 1e3:7.1f}  p99 {percentile(values, 0.99) * 1e3:7.1f}  "
            f"max {max(values) * 1e3:7.1f} ms ({len(values)})")


def window(host: str, port: int, bundle: str, pid: int, seconds: float, concurrency: int, processes: int,
           openssl: bool) -> None:
    context = multiprocessing.get_context("spawn")
    attackers: list = []
    if concurrency and openssl:
        attackers = [(subprocess.Popen(["openssl", "s_time", "-connect", f"{host}:{port}", "-new", "-time",
                                        str(int(seconds))], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True), None) for _ in range(concurrency)]
    for _ in range(processes if concurrency and not openssl else 0):
        ours, theirs = context.Pipe()
        process = context.Process(target=attacker, args=(host, port, max(1, concurrency // processes), seconds, theirs))
        process.start()
        attackers.append((process, ours))
    if attackers:
        time.sleep(0.5)  # the attackers' interpreters are up: measure while they run
    cpu = cpu_seconds(pid)
    kept, fresh = asyncio.run(victims(host, port, bundle, seconds - 0.5 if concurrency else seconds))
    used = cpu_seconds(pid) - cpu
    label = f"attack x{concurrency:<4}" if concurrency else "no attack   "
    line = f"{label} operator CPU {used / seconds * 100:5.1f} %"
    if attackers:
        done = failed = 0
        for process, ours in attackers:
            if ours is None:  # openssl s_time: "N connections in T real seconds"
                output, _ = process.communicate(timeout=seconds + 30)
                found = re.search(r"(\d+) connections in [\d.]+s", output)
                done += int(found.group(1)) if found else 0
                continue
            counts = ours.recv()
            done, failed = done + counts[0], failed + counts[1]
            process.join(30)
        line += f"  handshakes {done / seconds:7.0f}/s ({failed} failed), {used / max(done, 1) * 1e3:.2f} ms CPU each"
    print(line)
    print(f"    kept-alive /healthz: {spread(kept)}")
    print(f"    new connection     : {spread(fresh)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--processes", type=int, default=1, help="attacker processes sharing the concurrency")
    parser.add_argument("--openssl", action="store_true", help="attack with `--concurrency` openssl s_time processes")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "mesh.yaml"
        config.write_text(yaml.safe_dump(MESH))
        state = Path(tmp) / "state"
        operator = subprocess.Popen(
            [sys.executable, "-m", "ipsec_mesh_operator.main", "standalone", "--config", str(config),
             "--state-dir", str(state), "--listen", "127.0.0.1:0", "--log-level", "WARNING"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'sidecar'}"})
        try:
            for _ in range(600):
                if (state / "api-url").exists():
                    break
                time.sleep(0.1)
            url = (state / "api-url").read_text().strip()
            host, port = url.removeprefix("https://").rsplit(":", 1)
            bundle = (state / "ca-bundle.pem").read_text()
            for _ in range(args.rounds):
                for concurrency in (0, *args.concurrency):
                    window(host, int(port), bundle, operator.pid, args.seconds, concurrency, args.processes,
                           args.openssl)
        finally:
            operator.send_signal(signal.SIGINT)
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
