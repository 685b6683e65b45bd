"""Mesh-mode start-up imports only what mesh mode needs: each module costs every pod memory.

Counted in a fresh interpreter (what `ipsec-mesh-sidecar mesh` with the XFRM data plane
imports before and during start-up), so a regression shows as a name or a count, not a
timing. The figures behind the list are in docs/benchmarks.md (Sidecar memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"

# What `ipsec-mesh-sidecar mesh` imports: the CLI module, then (inside mesh_main/run_mesh and
# MeshSidecar) settings, bootstrap, the mesh API client, mesh mode and the XFRM data plane.
PROBE = """
import json, sys
import ipsec_mesh.agent.cli
ipsec_mesh.agent.cli.mesh_main = lambda settings, dataplane: 0  # what main() decides, not the run
ipsec_mesh.agent.cli.main(["mesh"])  # the injected command line
import ipsec_mesh.agent.mesh_settings, ipsec_mesh.agent.bootstrap, ipsec_mesh.meshapi.client
import ipsec_mesh.agent.mesh_mode, ipsec_mesh.agent.xfrm_dataplane
print(json.dumps(sorted(sys.modules)))
"""

# What `ipsec-mesh-sidecar run --config FILE` imports: the CLI with argparse, the YAML configuration,
# the agent with its status server and the XFRM data plane.
RUN_PROBE = """
import json, sys
import ipsec_mesh.agent.cli
ipsec_mesh.agent.cli.build_parser().parse_args(["run", "--config", "sidecar.yaml"])
import ipsec_mesh.agent.config, ipsec_mesh.agent.runtime, ipsec_mesh.agent.status_server
import ipsec_mesh.agent.xfrm_dataplane
print(json.dumps(sorted(sys.modules)))
"""

# The sidecar runs on its own event loop (ipsec_mesh.aio): asyncio costs 2.4 MB RssAnon with what only it
# loads, subprocess and concurrent.futures (docs/benchmarks.md). Neither mode may load them.
NOT_IN_THE_SIDECAR = ("asyncio", "subprocess", "concurrent")

# Never needed by mesh mode: YAML (the `run` configuration and optional settings files),
# libnftables (loaded when a Service needs translating), and pyroute2's namespace and process
# helpers with what they drag in (multiprocessing, pickle, ctypes.util, shutil, lzma, bz2, platform),
# difflib (wording of configuration errors only), argparse (the injected command line has no options),
# pathlib (file paths of the `run` configuration; mesh mode reads its few files with open()).
NOT_IN_MESH_MODE = ("yaml", "nftables", "pyroute2.netns", "pyroute2.process", "pyroute2.config",
                    "multiprocessing", "pickle", "ctypes.util", "shutil", "lzma", "bz2", "tempfile", "platform",
                    "difflib", "argparse", "gettext", "pathlib", "fnmatch")
# Modules loaded in all (stdlib, cryptography, ours): 364 before the cuts of issue 14, 319 after;
# then ESP-as-liveness, packed XFRM requests, ClusterIP routes and SCTP offload (ours, 326);
# then the injected command line without argparse and gettext (324); counted without `site` since
# (as the image has no editable-install finder), and without pathlib, fnmatch, ntpath (316).
# Then our own event loop instead of asyncio (280).
# A new dependency of mesh mode has to raise this bound on purpose.
MAX_MODULES = 280


def _modules(probe: str) -> list[str]:
    # -S: without site, so the dev venv's editable-install finder (which imports pathlib) is not
    # counted: the image has none. Its packages come from the venv's site-packages directly.
    path = [str(SIDECAR), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": os.pathsep.join(path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _loaded(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in packages or m in packages)


def test_mesh_mode_startup_imports_nothing_it_does_not_need():
    modules = _modules(PROBE)
    assert _loaded(modules, NOT_IN_THE_SIDECAR) == []
    assert _loaded(modules, NOT_IN_MESH_MODE) == []
    assert len(modules) <= MAX_MODULES, len(modules)


def test_run_mode_does_not_load_asyncio_either():
    assert _loaded(_modules(RUN_PROBE), NOT_IN_THE_SIDECAR) == []
