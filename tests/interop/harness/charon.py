"""strongSwan's charon running inside a test network namespace, driven over vici.

Each instance gets its own directory: strongswan.conf, swanctl/ (swanctl.conf and
credentials), run/ (bind-mounted over /run inside the namespace, because charon's
pid file path is compiled in) and charon.log.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from ipsec_mesh_operator.netns import stop_process

from .netns import Namespace
from .shim import build_shim
from .swanctl import Connection, IkeSa, Tree, render
from .vici import ViciError, ViciSession

CHARON_BIN = Path("/usr/lib/ipsec/charon")
SWANCTL_BIN = Path(shutil.which("swanctl") or "/usr/sbin/swanctl")
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

# kdf is needed for SHA-2 PRF+ in 5.9; openssl covers AES/GCM/ChaCha/ECDSA/Ed25519/RSA/MODP.
LOAD = ("random nonce openssl aes sha1 sha2 hmac gcm chapoly curve25519 x509 pem pkcs1 "
        "pkcs8 revocation constraints pubkey kdf kernel-netlink socket-default vici updown")
LOG_LEVELS = {"default": 1, "ike": 2, "cfg": 2, "net": 1, "enc": 1, "knl": 1}
# Credential kinds -> swanctl sub-directory they are loaded from.
CRED_DIRS = {"cert": "x509", "cacert": "x509ca", "key": "private"}

T = TypeVar("T")


class CharonError(RuntimeError):
    """charon failed to start or to load its configuration."""


def missing_requirements() -> str | None:
    """None when charon and swanctl are usable here, else what is missing."""
    if not CHARON_BIN.exists():
        return f"{CHARON_BIN} is missing (apt install strongswan-charon)"
    if not SWANCTL_BIN.exists():
        return "swanctl is missing (apt install strongswan-swanctl)"
    absent = [p for p in LOAD.split()
              if not (PLUGIN_DIR / f"libstrongswan-{p}.so").exists()]
    if absent:
        return f"strongSwan plugins missing: {', '.join(absent)}"
    return None


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1,
             what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Charon:
    """One charon daemon in ``ns``; configure, ``start()``, drive, ``stop()``."""

    def __init__(self, ns: Namespace, workdir: Path, name: str = "charon", *,
                 fake_esp: bool = False, shim_path: Path | None = None,
                 settings: Tree | None = None, log_levels: dict[str, int] | None = None
                 ) -> None:
        self.ns = ns
        self.name = name
        self.dir = Path(workdir) / name
        self.conf_path = self.dir / "strongswan.conf"
        self.swanctl_dir = self.dir / "swanctl"
        self.socket_path = self.dir / "run" / "charon.vici"
        self.log_path = self.dir / "charon.log"
        # One line per SA request the fake-ESP shim rewrote (NEWSA->noop...).
        self.shim_log_path = self.dir / "xfrm_shim.log"
        self.fake_esp = fake_esp
        # Built (once, cached by mtime) on first use when the caller brings none.
        self.shim_path = build_shim() if fake_esp and shim_path is None else shim_path
        # Quick retransmits keep failing tests short; tests may override any of these.
        self.settings: Tree = merge({"install_routes": False, "retransmit_timeout": 1.0,
                                     "retransmit_tries": 3}, settings or {})
        self.log_levels = {**LOG_LEVELS, **(log_levels or {})}
        self.connections: dict[str, Connection] = {}
        self.secrets: Tree = {}
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        """charon's file log so far (ike 2 / cfg 2 / net 1 / enc 1 by default)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- configuration ----------------------------------------------------------
    def add_connection(self, name: str, connection: Connection) -> Connection:
        self.connections[name] = connection
        return connection

    def add_psk(self, secret: str, *ids: str) -> None:
        entry: Tree = {f"id-{i}": ident for i, ident in enumerate(ids, 1)}
        entry["secret"] = secret
        self.secrets[f"ike-{len(self.secrets) + 1}"] = entry

    def add_credential(self, kind: str, filename: str, pem: bytes) -> str:
        """Write a PEM into the swanctl dir for ``kind`` (cert/cacert/key)."""
        target = self.swanctl_dir / CRED_DIRS[kind] / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pem)
        if kind == "key":
            target.chmod(0o600)
        return filename

    def add_identity(self, name: str, cert_pem: bytes, key_pem: bytes,
                     ca_pems: tuple[bytes, ...] = ()) -> str:
        """Own certificate + private key (+ trusted CAs); returns the cert file name
        for ``Connection.local_certs``."""
        for index, ca_pem in enumerate(ca_pems):
            self.add_credential("cacert", f"ca-{index}.pem", ca_pem)
        self.add_credential("key", f"{name}.pem", key_pem)
        return self.add_credential("cert", f"{name}.pem", cert_pem)

    def strongswan_conf(self) -> str:
        charon: Tree = merge({
            "load": LOAD,
            "filelog": {"harness": {"path": str(self.log_path), "time_format": "%T",
                                    "ike_name": True, "flush_line": True,
                                    "append": False, **self.log_levels}},
            "plugins": {"vici": {"socket": f"unix://{self.socket_path}"}},
        }, self.settings)
        return render({"charon": charon,
                       "swanctl": {"socket": f"unix://{self.socket_path}"}}) + "\n"

    def swanctl_conf(self) -> str:
        tree: Tree = {"connections": {n: c.to_tree() for n, c in self.connections.items()},
                      "secrets": self.secrets}
        return render(tree) + "\n"

    def write_config(self) -> None:
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        self.swanctl_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.strongswan_conf())
        (self.swanctl_dir / "swanctl.conf").write_text(self.swanctl_conf())

    # --- lifecycle ----------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "STRONGSWAN_CONF": str(self.conf_path), "SWANCTL_DIR": str(self.swanctl_dir)}
        if self.fake_esp:
            env["LD_PRELOAD"] = str(self.shim_path)
            env["XFRM_SHIM_LOG"] = str(self.shim_log_path)
        return env

    def start(self, timeout: float = 10.0) -> "Charon":
        """Write config, start charon, wait for vici, ``swanctl --load-all``."""
        self.write_config()
        script = f"mount --bind {self.dir / 'run'} /run && exec {CHARON_BIN}"
        output = open(self.dir / "charon.stdout", "wb")
        try:
            self.process = self.ns.popen(["sh", "-c", script], env=self.env(),
                                         cwd=self.dir, stdout=output,
                                         stderr=subprocess.STDOUT)
        finally:
            output.close()
        try:
            wait_for(self._vici_ready, timeout, what=f"{self.name} vici socket")
        except TimeoutError as exc:
            raise CharonError(f"{exc}; output: {self._startup_output()}") from None
        self.load()
        return self

    def _vici_ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise CharonError(f"{self.name} exited with {self.process.returncode}: "
                              f"{self._startup_output()}")
        try:
            with ViciSession(str(self.socket_path), timeout=2) as session:
                session.request("version")
            return True
        except (OSError, ViciError):
            return False

    def _startup_output(self) -> str:
        path = self.dir / "charon.stdout"
        text = path.read_text(errors="replace") if path.exists() else ""
        return (text + self.log)[-2000:]

    def load(self) -> None:
        """(Re)write swanctl.conf and load connections, secrets and credentials."""
        self.write_config()
        result = self.swanctl("--load-all", "--noprompt")
        if result.returncode != 0 or "failed" in result.stdout:
            raise CharonError(f"swanctl --load-all failed: {result.stdout}{result.stderr}")

    def swanctl(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run swanctl against this instance (its socket and config dir)."""
        if timeout is None:
            # Under the VM tier's software emulation on a busy machine, --load-all took over 30 s.
            timeout = 120.0 if os.environ.get("IPSEC_MESH_IN_VM") else 30.0
        argv = [str(SWANCTL_BIN), *args, "--uri", f"unix://{self.socket_path}"]
        if args and args[0] in ("--load-all", "--load-conns", "--load-creds"):
            argv += ["--file", str(self.swanctl_dir / "swanctl.conf")]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env() | {"LD_PRELOAD": ""})

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        stop_process(self.process, signal.SIGTERM, timeout)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- control over vici -------------------------------------------------------------
    def vici(self, timeout: float = 30.0) -> ViciSession:
        return ViciSession(str(self.socket_path), timeout=timeout)

    def command(self, name: str, message: Tree | None = None, timeout: float = 30.0) -> Tree:
        with self.vici(timeout) as session:
            return session.request(name, message)

    def initiate(self, child: str | None = None, ike: str | None = None,
                 timeout: float = 10.0, wait: bool = True) -> Tree:
        """Initiate; with ``wait`` return once it succeeded (ViciError if it failed),
        otherwise return at once (vici timeout -1) and let the test poll."""
        message = _drop_none({"child": child, "ike": ike, "init-limits": False,
                              "timeout": int(timeout * 1000) if wait else -1})
        return self.command("initiate", message, timeout + 5)

    def terminate(self, ike: str | None = None, child: str | None = None,
                  ike_id: str | None = None, child_id: str | None = None,
                  force: bool = False, timeout: float = 10.0) -> Tree:
        message = _drop_none({"ike": ike, "child": child, "ike-id": ike_id,
                              "child-id": child_id, "force": force or None,
                              "timeout": int(timeout * 1000)})
        return self.command("terminate", message, timeout + 5)

    def rekey(self, ike: str | None = None, child: str | None = None,
              ike_id: str | None = None, child_id: str | None = None,
              reauth: bool = False) -> Tree:
        """Queue a rekey (charon answers before the exchange completes)."""
        message = _drop_none({"ike": ike, "child": child, "ike-id": ike_id,
                              "child-id": child_id, "reauth": reauth or None})
        return self.command("rekey", message)

    def list_sas(self, ike: str | None = None) -> list[IkeSa]:
        with self.vici() as session:
            # Not noblock: that would skip IKE_SAs a worker thread holds right now.
            _, events = session.streamed("list-sas", "list-sa", _drop_none({"ike": ike}))
        return [IkeSa.from_vici(name, raw)
                for event in events for name, raw in event.items() if isinstance(raw, dict)]

    def wait_for(self, predicate: Callable[[list[IkeSa]], T], timeout: float = 10.0,
                 what: str = "SA state") -> T:
        """Poll ``list_sas()`` until ``predicate(sas)`` is truthy; return its value."""
        try:
            return wait_for(lambda: predicate(self.list_sas()), timeout, 0.1, what)
        except TimeoutError as exc:
            raise TimeoutError(f"{self.name}: {exc}; SAs now: {self.list_sas()}") from None

    def wait_established(self, ike: str, children: tuple[str, ...] = (),
                         timeout: float = 10.0) -> IkeSa:
        """Wait for an ESTABLISHED IKE_SA ``ike`` with these children INSTALLED."""
        def ready(sas: list[IkeSa]) -> IkeSa | None:
            for sa in sas:
                if sa.name == ike and sa.state == "ESTABLISHED" and all(
                        (c := sa.child(n)) is not None and c.state == "INSTALLED"
                        for n in children):
                    return sa
            return None
        return self.wait_for(ready, timeout, what=f"{ike} established with {children}")

    def wait_gone(self, ike: str, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda sas: all(sa.name != ike for sa in sas), timeout,
                             what=f"{ike} to disappear")


def merge(base: Tree, override: Tree) -> Tree:
    """Recursive dict merge: sections merge, other values in ``override`` win."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _drop_none(message: dict[str, Any]) -> Tree:
    return {k: v for k, v in message.items() if v is not None}
