"""mypy, strict, over the IKE core, the mesh API model, the XFRM layer and the operator's model and pki
(pyproject.toml): any type error fails."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Modules excused from strict checking (pyproject.toml `ignore_errors` overrides): none since issue 12; keep it so.
MAX_EXCUSED = 0


def test_mypy_strict_passes_on_the_ike_core():
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_strict_exceptions_do_not_grow():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    # Strict packages may only be added to.
    assert config["strict"] is True
    assert {"sidecar/ipsec_mesh/ike", "sidecar/ipsec_mesh/meshapi", "sidecar/ipsec_mesh/xfrm",
            "operator/ipsec_mesh_operator/model", "operator/ipsec_mesh_operator/pki"} <= set(config["files"])
    excused = [m for o in config.get("overrides", []) if o.get("ignore_errors") for m in o["module"]]
    assert len(excused) <= MAX_EXCUSED, excused
    # The task contract, the task manager, the SA and its state never leave strict checking.
    core = {"ipsec_mesh.ike.task", "ipsec_mesh.ike.manager", "ipsec_mesh.ike.sa", "ipsec_mesh.ike.state",
            "ipsec_mesh.ike.child", "ipsec_mesh.ike.exchanges", "ipsec_mesh.ike.exchanges.informational"}
    assert not core & set(excused)


def test_both_packages_ship_their_types():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, folder in (("ipsec_mesh", "sidecar"), ("ipsec_mesh_operator", "operator")):
        assert (ROOT / folder / package / "py.typed").is_file() and "py.typed" in config[package]
