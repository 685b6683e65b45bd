"""`ipsec-mesh-sidecar`'s first code: the process's memory settings, before the sidecar's modules load.

Out of transparent huge pages before the imports grow the heap and pymalloc's arenas (agent/heap.py):
taken after them, the kernel could already have folded a partly used 2 MiB range into a huge page
(importing takes seconds on a slow node, and khugepaged looks every 10 s), and a huge page made is
not unmade. Then the command line (agent/cli.py).
"""

from __future__ import annotations

import sys

from .heap import no_huge_pages


def main() -> int:
    no_huge_pages()
    from .cli import main as command

    return command()


if __name__ == "__main__":
    sys.exit(main())
