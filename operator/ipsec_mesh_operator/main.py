"""`ipsec-mesh`: the project's command line.

    ipsec-mesh demo [--config FILE] [--no-vm]          a small mesh on this machine (as root)
    ipsec-mesh peerings [-n NS | -A] [--sas] [--json]  peerings: members, peers, SAs, conditions
    ipsec-mesh explain NS/POD NS/POD [--json]          is traffic between two pods encrypted? if not, why
    ipsec-mesh explain NS/POD svc/NS/NAME [--json]     the same for a pod's calls to a Service, per endpoint
    ipsec-mesh explain NS/POD remote/NS/PEERING/REMOTE[/ADDRESS] [--json]
    ipsec-mesh explain NS/POD ADDRESS [--json]         the same with a peer in another cluster (by the
                                                       peering's remote, or an address in a remote's CIDRs)
    ipsec-mesh standalone --config FILE --state-dir DIR --listen IP:PORT
                                                       the operator without Kubernetes (docs/standalone.md)

peerings and explain read the cluster of the current kubeconfig (--kubeconfig,
--context), or a standalone operator with --standalone STATE_DIR.
explain exits 0 when the pair (or every serving endpoint of the Service, or the remote) is
encrypted, 1 when it is not, 2 on usage
errors, 3 when the facts cannot be collected.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import sys

#: Commands that parse their own arguments: the module (in this package) whose main() runs them.
DELEGATED = {"demo": "demo", "standalone": "standalone.cli"}
EXIT_ENCRYPTED, EXIT_NOT_ENCRYPTED, EXIT_USAGE, EXIT_NO_FACTS = 0, 1, 2, 3


def _pod_ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: give a pod as NAMESPACE/NAME")
    return namespace, name


def _target(text: str) -> tuple[str, ...]:
    """NS/POD, svc/NS/NAME for a Service, remote/NS/PEERING/REMOTE[/ADDRESS] or an address for a remote peer."""
    try:
        return "remote", "", "", str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text.startswith("remote/"):
        parts = text[len("remote/"):].split("/")
        address = ""
        if len(parts) == 4:
            try:
                address = str(ipaddress.ip_address(parts.pop()))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r}: {parts[-1]!r} is not an IP address") from None
        if len(parts) != 3 or not all(parts):
            raise argparse.ArgumentTypeError(f"{text!r}: give a remote peer as remote/NAMESPACE/PEERING/REMOTE"
                                             "[/ADDRESS]")
        return "remote", f"{parts[0]}/{parts[1]}", parts[2], address
    if text.startswith("svc/"):
        namespace, _, name = text[4:].partition("/")
        if not namespace or not name or "/" in name:
            raise argparse.ArgumentTypeError(f"{text!r}: give a Service as svc/NAMESPACE/NAME")
        return "svc", namespace, name
    return _pod_ref(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipsec-mesh", description="ipsec-mesh operations")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--standalone", metavar="STATE_DIR", help="a standalone operator's state directory")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    common.add_argument("--context", help="kubeconfig context")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    peerings = commands.add_parser("peerings", parents=[common], help="peerings, members, peers, SAs")
    scope = peerings.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="only this namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (the default)")
    peerings.add_argument("--sas", action="store_true", help="also ask the sidecars in scope for their SAs")
    explain = commands.add_parser("explain", parents=[common], help="why two pods' traffic is (not) encrypted")
    explain.add_argument("a", type=_pod_ref, metavar="NS/POD")
    explain.add_argument("b", type=_target, metavar="NS/POD|svc/NS/NAME|remote/NS/PEERING/REMOTE[/ADDRESS]|ADDRESS")
    return parser


def _source(args: argparse.Namespace):
    from .cli.sources import ClusterSource, StandaloneSource

    if args.standalone:
        return StandaloneSource(args.standalone)
    return ClusterSource(args.kubeconfig, args.context)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else EXIT_USAGE
    if argv[0] in DELEGATED:
        return importlib.import_module(f".{DELEGATED[argv[0]]}", __package__).main(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code else 0
    from .cli.sources import SourceError

    try:
        source = _source(args)
        if args.command == "explain":
            return _explain(source, args)
        return _peerings(source, args)
    except SourceError as exc:
        print(f"ipsec-mesh: {exc}", file=sys.stderr)
        return EXIT_NO_FACTS


def _explain(source, args: argparse.Namespace) -> int:
    from .cli import render
    from .cli.diagnose import RemoteTarget, explain, explain_remote, explain_service

    if len(args.b) == 4:  # ("remote", peering or "", remote or "", address or "")
        target = RemoteTarget(*(part or None for part in args.b[1:]))
        verdict = explain_remote(source.facts([args.a]), args.a, target)
        print(render.verdict_json(verdict) if args.json else render.verdict_text(verdict))
    elif len(args.b) == 3:
        key = args.b[1:]
        verdict = explain_service(source.service_facts(args.a, key), args.a, key)
        print(render.service_verdict_json(verdict) if args.json else render.service_verdict_text(verdict))
    else:
        verdict = explain(source.facts([args.a, args.b]), args.a, args.b)
        print(render.verdict_json(verdict) if args.json else render.verdict_text(verdict))
    return EXIT_ENCRYPTED if verdict.encrypted else EXIT_NOT_ENCRYPTED


def _peerings(source, args: argparse.Namespace) -> int:
    from .cli import render
    from .cli.overview import overview

    entries = overview(source.facts([], args.namespace, all_pods=True, statuses=args.sas))
    print(render.overview_json(entries) if args.json else render.overview_text(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
