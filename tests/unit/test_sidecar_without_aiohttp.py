"""The sidecar never imports aiohttp (about 12 MB per pod): the mesh-mode path and every module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"

PROBE = """
import importlib, pkgutil, sys
import ipsec_mesh.agent.cli, ipsec_mesh.agent.mesh_mode, ipsec_mesh.agent.bootstrap
from ipsec_mesh.meshapi import MeshApiClient
assert MeshApiClient.__module__ == "ipsec_mesh.meshapi.client"
assert not [m for m in sys.modules if m.startswith("aiohttp")], "mesh mode imported aiohttp"
import ipsec_mesh
for module in pkgutil.walk_packages(ipsec_mesh.__path__, "ipsec_mesh."):
    importlib.import_module(module.name)
loaded = [m for m in sys.modules if m.startswith("aiohttp")]
assert not loaded, loaded
print("ok")
"""


def test_no_sidecar_module_imports_aiohttp():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(SIDECAR), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
