"""Mesh-mode start-up imports only what mesh mode needs: each module costs every pod memory.

Counted in a fresh interpreter (what `ipsec-mesh-sidecar mesh` with the XFRM data plane
imports before and during start-up), so a regression shows as a name or a count, not a
timing. The figures behind the list are in docs/benchmarks.md (Sidecar memory).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.support.pki import MeshPki

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"

# What `ipsec-mesh-sidecar mesh` imports: its entry point and the CLI module, then (inside
# mesh_main/run_mesh and MeshSidecar) settings, bootstrap, the mesh API client, mesh mode and the XFRM
# data plane.
PROBE = """
import json, sys
import ipsec_mesh.agent.launch, ipsec_mesh.agent.cli
ipsec_mesh.agent.cli.mesh_main = lambda settings, dataplane: 0  # what main() decides, not the run
sys.argv = ["ipsec-mesh-sidecar", "mesh"]  # the injected command line
assert ipsec_mesh.agent.launch.main() == 0
import ipsec_mesh.agent.mesh_settings, ipsec_mesh.agent.bootstrap, ipsec_mesh.meshapi.client
import ipsec_mesh.agent.mesh_mode, ipsec_mesh.agent.xfrm_dataplane
# What bootstrap and IKE_AUTH do with certificates: a CSR, the issued PEM, a trust store, a
# chain validation (the certificate comes from the test, made with cryptography.x509).
import os, time
from ipsec_mesh.agent.credentials import new_key_and_csr
from ipsec_mesh.ike import TrustStore, certificates_from_pem
new_key_and_csr("web-0.shop.pod.mesh")
leaf = certificates_from_pem(os.environ["PROBE_LEAF_PEM"].encode())
TrustStore.from_pem(os.environ["PROBE_ROOT_PEM"].encode()).validate(leaf, time.time())
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

# The Service translation: its modules, and ctypes under libnftables' binding, load when the peer map
# first lists a Service (or at start if an earlier instance left a table or routes: svcnat/ondemand.py).
# Mesh mode with the XFRM data plane and no Service loads only the two small modules that ask the kernel.
SERVICE_TRANSLATION = tuple(f"ipsec_mesh.svcnat.{name}" for name in (
    "translation", "ruleset", "nft", "routes", "offload", "mtu", "routewatch")) + ("ctypes",)

# Never needed by mesh mode: pyroute2 (the XFRM layer frames netlink itself since issue 14: xfrm/netlink.py), YAML (the `run` configuration and optional settings files),
# libnftables (loaded when a Service needs translating), and pyroute2's namespace and process
# helpers with what they drag in (multiprocessing, pickle, ctypes.util, shutil, lzma, bz2, platform),
# difflib (wording of configuration errors only), argparse (the injected command line has no options),
# pathlib (file paths of the `run` configuration; mesh mode reads its few files with open()),
# cryptography.x509 and what it loads (email, calendar, datetime: ~1.1 MB; the sidecar parses
# certificates and writes its CSR itself, ike/certificate.py and ike/csr.py), and pyroute2 (the
# XFRM layer frames netlink itself, xfrm/netlink.py).
NOT_IN_MESH_MODE = ("pyroute2", "yaml", "nftables", "pyroute2.netns", "pyroute2.process", "pyroute2.config",
                    "multiprocessing", "pickle", "ctypes.util", "shutil", "lzma", "bz2", "tempfile", "platform",
                    "difflib", "argparse", "gettext", "pathlib", "fnmatch",
                    "cryptography.x509", "email", "calendar", "datetime", "_datetime", *SERVICE_TRANSLATION)
# Modules loaded in all (stdlib, cryptography, ours): 364 before the cuts of issue 14, 319 after;
# then ESP-as-liveness, packed XFRM requests, ClusterIP routes and SCTP offload (ours, 326);
# then the injected command line without argparse and gettext (324); counted without `site` since
# (as the image has no editable-install finder), and without pathlib, fnmatch, ntpath (316).
# Then certificates and the CSR without cryptography.x509, counted with a CSR, a trust store and
# a chain validation in the probe (301); then the XFRM layer's own netlink framing instead of
# pyroute2's (295); then our own event loop instead of asyncio (257); then ipsec_mesh.records, whose
# shared repr/eq/hash replace 0.37 MB of per-class dataclass methods (258); then the Service translation
# loaded only when a Service needs it (252); then mmap, for netlink receive buffers that hold only the pages a
# datagram wrote (253: 0.37 MB less with the XFRM data plane's three channels); then ipsec_mesh.keybounds,
# the RSA key bounds the IKE core and the operator share instead of each keeping a copy (254); then
# ipsec_mesh.agent.heap, the heap trim after status reports (255: 0.1-0.5 MB of freed heap given back);
# then ipsec_mesh.agent.launch, the entry point that takes the process out of transparent huge pages
# before the imports (256: 0.4-0.6 MiB that khugepaged made resident in most sidecars in the VM).
# A new dependency of mesh mode has to raise this bound on purpose.
MAX_MODULES = 256


def _mesh_mode_modules(*flags: str, probe: str = PROBE) -> list[str]:
    # -S: without site, so the dev venv's editable-install finder (which imports pathlib) is not
    # counted: the image has none. Its packages come from the venv's site-packages directly.
    pki = MeshPki()
    path = [str(SIDECAR), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    result = subprocess.run([sys.executable, "-S", *flags, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": os.pathsep.join(path), "PATH": "/usr/bin:/bin",
                                 "PROBE_ROOT_PEM": pki.root.cert_pem().decode(),
                                 "PROBE_LEAF_PEM": pki.issue("web-0", dns=["web-0.shop.pod.mesh"]).cert_pem().decode()})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _loaded(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in packages))


def test_mesh_mode_startup_imports_nothing_it_does_not_need():
    modules = _mesh_mode_modules()
    assert _loaded(modules, NOT_IN_THE_SIDECAR) == []
    assert _loaded(modules, NOT_IN_MESH_MODE) == []
    assert len(modules) <= MAX_MODULES, len(modules)


def test_run_mode_does_not_load_asyncio_either():
    assert _loaded(_mesh_mode_modules(probe=RUN_PROBE), NOT_IN_THE_SIDECAR) == []


def test_a_configured_dn_identity_does_not_load_x509_either():
    """`run` mode's DN identities and patterns are parsed by identity.dn_from_text, not cryptography.x509."""
    probe = ("import sys; from ipsec_mesh.ike import Identity; "
             "identity = Identity.parse('dn:CN=moon,O=strongSwan,C=CH'); str(identity); "
             "assert identity.matches('dn:CN=*,O=strongSwan,C=CH'); "
             "print(sorted(m for m in sys.modules if m.startswith(('cryptography.x509', 'email', 'datetime'))))")
    path = [str(SIDECAR), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": os.pathsep.join(path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_mesh_mode_starts_the_same_under_python_oo_as_the_image_runs_it():
    """The sidecar image sets PYTHONOPTIMIZE=2: no docstrings (and no `assert`) anywhere."""
    assert _mesh_mode_modules("-OO") == _mesh_mode_modules()


def test_the_sidecar_has_no_assert_statement_that_python_oo_would_drop():
    """Checks the sidecar relies on are `if ...: raise InvariantError(...)`, which -OO keeps."""
    found = []
    for path in sorted((SIDECAR / "ipsec_mesh").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(SIDECAR)}:{node.lineno}")
    assert found == []


# Every module of the sidecar package (mesh mode, `run` mode, svcnat, the CLI) imported with pyroute2
# made unimportable: the sidecar must not need it anywhere, only the tests and the operator do.
NO_PYROUTE2 = """
import importlib, json, pkgutil, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pyroute2":
            raise ImportError("pyroute2 refused: " + name)
        return None

sys.meta_path.insert(0, Refuse())
import ipsec_mesh
names = [m.name for m in pkgutil.walk_packages(ipsec_mesh.__path__, "ipsec_mesh.")]
for name in names:
    importlib.import_module(name)
print(json.dumps(names))
"""


def test_no_sidecar_module_needs_pyroute2():
    path = [str(SIDECAR), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    result = subprocess.run([sys.executable, "-S", "-c", NO_PYROUTE2], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": os.pathsep.join(path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    names = json.loads(result.stdout)
    assert {"ipsec_mesh.agent.runtime", "ipsec_mesh.agent.mesh_mode", "ipsec_mesh.svcnat.routes",
            "ipsec_mesh.xfrm.api"} <= set(names)
