"""`ipsec-mesh`: the project's command line.

    ipsec-mesh demo [--config FILE] [--no-vm]    a small mesh on this machine (as root)
    ipsec-mesh standalone --config FILE --state-dir DIR --listen IP:PORT
                                                 the operator without Kubernetes (docs/standalone.md)
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if command == "standalone":
        from .standalone.cli import main as standalone_main

        return standalone_main(rest)
    print(f"unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
