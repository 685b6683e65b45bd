"""Builds the LD_PRELOAD XFRM shim (xfrm_shim.c) with gcc, once per directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("xfrm_shim.c")
DEFAULT_DIR = Path(tempfile.gettempdir()) / "ipsecmesh-xfrm-shim"


class ShimBuildError(RuntimeError):
    """gcc is missing or failed to compile the shim."""


def build_shim(out_dir: Path = DEFAULT_DIR) -> Path:
    """Compile the shim into ``out_dir`` (reused if already newer than the source).

    gcc writes a private temporary file that is renamed into place, so parallel
    test runs sharing ``out_dir`` never load a half-written library.
    """
    target = Path(out_dir) / "xfrm_shim.so"
    if target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ShimBuildError("gcc is not installed (apt install gcc libc6-dev)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".xfrm_shim.{os.getpid()}.so")
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
                           "-o", str(partial), str(SOURCE), "-ldl", "-lpthread"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ShimBuildError(f"gcc failed on {SOURCE.name}: {proc.stderr.strip()}")
    os.replace(partial, target)
    return target
