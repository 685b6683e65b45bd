"""`ipsec-mesh-sidecar`: run the sidecar from a YAML file or the mesh API, or ask a running one for its SAs.

    ipsec-mesh-sidecar run --config sidecar.yaml [--dataplane none]
    ipsec-mesh-sidecar mesh [--settings settings.yaml] [--dataplane none]   (environment: mesh_settings.py)
    ipsec-mesh-sidecar status [--url http://127.0.0.1:9741] [--json]
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

from .. import aio
from ..ike import DerError, certificates_from_pem
from ..meshapi.ports import STATUS_LISTEN
from .config import ConfigError, IkeSettings, load_agent_config
from .dataplane import NullDataPlane
from .logs import setup_logging
from .peers import PeerSet, PeerSetError

if TYPE_CHECKING:
    import argparse

# Set to a file path to run the sidecar under cProfile and dump the statistics there at exit.
PROFILE_ENV = "IPSEC_MESH_PROFILE"
# Not taken from __doc__: `python -OO` strips docstrings.
DESCRIPTION = "run the sidecar from a YAML file or the mesh API, or ask a running one for its SAs"
# The command line the admission webhook injects (model/sidecar.py SIDECAR_COMMAND): it has no
# options, so it is recognised without argparse (0.35 MB resident in every pod).
INJECTED_ARGS = ["mesh"]


def _load_credentials(config):
    if config.cert_file is None:
        return None, ()
    try:
        chain = tuple(certificates_from_pem(config.cert_file.read_bytes()))
    except DerError as exc:
        raise ConfigError(f"{config.cert_file}: {exc}") from None
    key = serialization.load_pem_private_key(config.key_file.read_bytes(), password=None)
    return key, chain


def make_dataplane(kind: str, netns: str | None, ike: IkeSettings):
    if kind == "none":
        return NullDataPlane()
    from .xfrm_dataplane import XfrmDataPlane, handover_limit

    return XfrmDataPlane(netns=netns, handover_limit=handover_limit(ike.retransmit()))


async def run(config, dataplane_kind: str) -> int:
    from .runtime import Agent
    from .status_server import StatusServer

    key, chain = _load_credentials(config)
    peers = PeerSet(config.peer_map, config.ike, private_key=key, chain=chain)
    agent = Agent(config, make_dataplane(dataplane_kind, config.netns, config.ike), peers)
    _tune_gc()
    server = None
    if config.status_listen is not None:
        server = StatusServer(agent, *config.status_listen)
        await server.start()
    try:
        await agent.run_forever()
    finally:
        if server is not None:
            await server.stop()
    return 0


async def run_mesh(settings, dataplane_kind: str) -> int:
    from ..meshapi.client import MeshApiClient
    from .mesh_mode import MeshSidecar

    async with MeshApiClient(settings.api_url, ca_bundle=settings.ca_bundle,
                             token_file=settings.token_file) as client:
        sidecar = MeshSidecar(settings, client, make_dataplane(dataplane_kind, settings.sidecar.netns, settings.sidecar.ike))
        _tune_gc()
        await sidecar.run()
    return 0


def mesh_main(settings_file: str | None, dataplane: str | None, environ=os.environ) -> int:
    from .bootstrap import BootstrapError
    from .mesh_settings import mesh_settings_from_env

    try:
        settings = mesh_settings_from_env(environ, settings_file)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.sidecar.log_format, settings.sidecar.log_level)
    try:
        return aio.run(run_mesh(settings, dataplane or settings.sidecar.dataplane))
    except BootstrapError as exc:
        print(f"ipsec-mesh-sidecar: {exc}", file=sys.stderr)
        return exc.exit_code


def _status(url: str, as_json: bool) -> int:
    # Imported here: urllib.request brings http.client, email and ssl (1.5 MB resident)
    # into a daemon that never needs them.
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=5) as response:
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot reach the sidecar at {url}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{status['identity']}  ready={status['ready']}  dataplane={status['dataplane']['dataplane']}"
          f"  peer map v{status['peer_map_version']}")
    for sa in status["ike_sas"]:
        print(f"  IKE {sa['ike_sa']} {sa['state']} {sa['local']} <-> {sa['remote']} "
              f"{sa['remote_id']} {sa['algorithm']}")
        for child in sa["children"]:
            print(f"    CHILD {child['name']} {child['state']} {child['inbound_spi']}_i {child['outbound_spi']}_o "
                  f"{child['algorithm']} {child['mode']}{' UDP-encap' if child['encap'] else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="ipsec-mesh-sidecar", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the sidecar from a YAML configuration")
    run_p.add_argument("--config", required=True)
    run_p.add_argument("--dataplane", choices=["xfrm", "none"], help="override the file's data plane")
    mesh_p = sub.add_parser("mesh", help="run in a cluster: identity and peer maps from the operator's mesh API")
    mesh_p.add_argument("--settings", help="YAML with dataplane, netns, initiate, ike, log (optional)")
    mesh_p.add_argument("--dataplane", choices=["xfrm", "none"], help="override the settings' data plane")
    st = sub.add_parser("status", help="show a running sidecar's IKE and CHILD SAs")
    st.add_argument("--url", default=f"http://{STATUS_LISTEN}")
    st.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == INJECTED_ARGS:
        return mesh_main(None, None)
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return _status(args.url, args.json)
    if args.command == "mesh":
        return mesh_main(args.settings, args.dataplane)
    try:
        config = load_agent_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.log_level)
    profile_path = os.environ.get(PROFILE_ENV)

    def serve() -> int:
        return aio.run(run(config, args.dataplane or config.dataplane))

    try:
        return _profiled(profile_path, serve) if profile_path else serve()
    except PeerSetError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path of a long-running daemon.

    What exists after startup (modules, configuration, credentials) lives as long as
    the process: freezing it spares every full collection from walking it again. An
    IKE exchange allocates thousands of short-lived objects that reference counting
    frees; collecting the youngest generation every 5000 allocations instead of 700
    costs a little memory and saves about a tenth of the CPU per IKE SA.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(5000, 20, 20)


def _profiled(path: str, body) -> int:
    """Run `body` under cProfile and write the statistics to `path` when it returns (benchmarks)."""
    import cProfile

    profiler = cProfile.Profile(time.process_time)  # CPU time: what the benchmark measures
    try:
        return profiler.runcall(body)
    finally:
        profiler.dump_stats(path)


if __name__ == "__main__":
    sys.exit(main())
