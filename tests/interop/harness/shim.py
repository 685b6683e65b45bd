"""Builds the LD_PRELOAD XFRM shim (xfrm_shim.c) with gcc, once per directory."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("xfrm_shim.c")


class ShimBuildError(RuntimeError):
    """gcc is missing or failed to compile the shim."""


def build_shim(out_dir: Path) -> Path:
    """Compile the shim into ``out_dir`` (reused if already newer than the source)."""
    target = Path(out_dir) / "xfrm_shim.so"
    if target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ShimBuildError("gcc is not installed (apt install gcc libc6-dev)")
    target.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
                           "-o", str(target), str(SOURCE), "-ldl", "-lpthread"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ShimBuildError(f"gcc failed on {SOURCE.name}: {proc.stderr.strip()}")
    return target
