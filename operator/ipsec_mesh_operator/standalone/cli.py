"""`ipsec-mesh standalone`: the operator without Kubernetes (see runner.py and docs/standalone.md)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from pathlib import Path

from ipsec_mesh.meshapi import PeerMapError, fields

from ..pki.ca import CAStateError
from .config import StandaloneConfigError
from .runner import DEFAULT_TOKEN_LIFETIME, StandaloneOperator
from .store import SecretStoreError
from .tokens import InvalidToken


def parse_listen(text: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT``; the serving certificate names that IP."""
    try:
        host, number = fields.host_port(text, "--listen")
    except PeerMapError:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT (the certificate names the IP)") from None
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        raise argparse.ArgumentTypeError(f"{text!r}: give a specific IP and a port 0..65535")
    return str(address), number


def _duration(text: str) -> int:
    try:
        return fields.duration(text, "--token-lifetime")
    except PeerMapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ipsec-mesh standalone",
        description="Run the operator without Kubernetes: pods and peerings from a YAML file, "
                    "the mesh API over HTTPS, state in a directory. SIGHUP reloads the YAML.")
    parser.add_argument("--config", type=Path, required=True, help="pods and peerings (docs/standalone.md)")
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="mesh CA, PSKs, token key, pod tokens, ca-bundle.pem (created 0700)")
    parser.add_argument("--listen", type=parse_listen, required=True, help="IP:PORT of the mesh API")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="Prometheus metrics on the same IP (0: any free port)")
    parser.add_argument("--token-lifetime", type=_duration, default=int(DEFAULT_TOKEN_LIFETIME),
                        help="lifetime of the pods' tokens, renewed at half of it (default 1h)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    try:
        operator = StandaloneOperator(args.config, args.state_dir, host, port, metrics_port=args.metrics_port,
                                      token_lifetime=args.token_lifetime)
    except (StandaloneConfigError, SecretStoreError, InvalidToken, OSError) as exc:
        print(f"ipsec-mesh standalone: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        await operator.run(asyncio.Event())

    try:
        asyncio.run(serve())
    except (SecretStoreError, CAStateError, OSError) as exc:
        print(f"ipsec-mesh standalone: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
