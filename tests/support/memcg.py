"""A child memory cgroup with a limit, for running one process under the chart's memory limit.

cgroup v2 where the memory controller is there (memory.max, memory.peak, memory.events),
else cgroup v1's memory hierarchy (memory.limit_in_bytes, memory.max_usage_in_bytes,
memory.oom_control). This machine kind has the memory controller on v1 only.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class MemoryCgroup:
    def __init__(self, name: str, limit: int):
        v2 = ROOT / "cgroup.controllers"
        if v2.exists() and "memory" in v2.read_text().split():
            own = next(line.split("::", 1)[1] for line in Path("/proc/self/cgroup").read_text().splitlines()
                       if line.startswith("0::"))
            self.v2, self.path = True, ROOT / own.lstrip("/") / name
        else:
            own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
                       if line.split(":")[1] == "memory")
            self.v2, self.path = False, ROOT / "memory" / own.lstrip("/") / name
        self.path.mkdir()
        self.limit = limit
        self._write("memory.max" if self.v2 else "memory.limit_in_bytes", str(limit))

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def enter(self) -> None:
        """In the child between fork and exec (Popen's preexec_fn): the process starts inside."""
        self._write("cgroup.procs", str(os.getpid()))

    def current(self) -> int:
        return int(self._read("memory.current" if self.v2 else "memory.usage_in_bytes"))

    def peak(self) -> int:
        return int(self._read("memory.peak" if self.v2 else "memory.max_usage_in_bytes"))

    def oom_kills(self) -> int:
        text = self._read("memory.events" if self.v2 else "memory.oom_control")
        return int(dict(line.split() for line in text.splitlines()).get("oom_kill", 0))

    def remove(self) -> None:
        self.path.rmdir()
