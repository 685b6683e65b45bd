"""The XFRM layer loads only pyroute2's netlink modules; the rest of pyroute2 still works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"

PROBE = """
import sys
import ipsec_mesh.xfrm
loaded = sorted(m for m in sys.modules if m.startswith("pyroute2"))
assert "pyroute2.iproute" not in loaded and "pyroute2.ndb" not in loaded, loaded
assert len(loaded) < 15, loaded
import pyroute2
from pyroute2 import netns
assert netns.__name__ == "pyroute2.netns"
assert pyroute2.IPRoute.__name__ == "IPRoute"  # the package initialiser runs on demand
assert "pyroute2.iproute" in sys.modules and pyroute2.__version__
try:
    pyroute2.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("missing names must raise AttributeError")
print("ok")
"""


def test_xfrm_loads_pyroute2_netlink_only_and_the_package_still_initialises_on_demand():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(SIDECAR), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
