"""Boot Debian's kernel under virtme-ng once and run a batch of pytest tests in it.

The guest sees the host's `/` read-only over 9p, so it runs this very worktree with the
host's venv python. Only the run directory (a fresh host temp dir passed with `--rwdir`)
is writable back: it carries the node ids in, and the guest's serialized pytest reports
(one JSON object per line, written by `vm.plugin.GuestReporter`) out.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

IN_VM_ENV = "IPSEC_MESH_IN_VM"
RESULTS_ENV = "IPSEC_MESH_VM_RESULTS"
NODEIDS_ENV = "IPSEC_MESH_VM_NODEIDS"
KERNEL_ENV = "IPSEC_MESH_VM_KERNEL"
TIMEOUT_ENV = "IPSEC_MESH_VM_TIMEOUT"
MEMORY_ENV = "IPSEC_MESH_VM_MEMORY"
CPUS_ENV = "IPSEC_MESH_VM_CPUS"
LOG_ENV = "IPSEC_MESH_VM_LOG"
VERBOSE_ENV = "IPSEC_MESH_VM_VERBOSE"
PLUGINS_ENV = "IPSEC_MESH_VM_PLUGINS"

DEFAULT_TIMEOUT = 2400.0  # the sidecar and demo tests start many Python processes under emulation
GUEST_UP_MARKER = "@@ipsec-mesh-vm: guest userspace up"
# Loaded up front so a missing module shows in the console log, not as a test oddity.
GUEST_MODULES = ("esp4", "esp6", "xfrm_user", "veth", "dummy")
# Plugin autoloading is off in the guest: importing hypothesis and kmock there costs tens
# of seconds under emulation. These are loaded explicitly (comma-separated in PLUGINS_ENV).
GUEST_PLUGINS = ("pytest_asyncio.plugin",)
_KERNEL_NAME = re.compile(r"^vmlinuz-(?P<version>.+)$")


class VMUnavailable(Exception):
    """Something the VM needs is missing on this host; the message says what."""


class VMRunError(Exception):
    """The VM was started but did not deliver results (boot failure, timeout, crash)."""


@dataclass(frozen=True)
class VMConfig:
    vng: Path
    qemu: Path
    kernel: Path
    memory: str = "2G"
    cpus: int = 2
    timeout: float = DEFAULT_TIMEOUT
    console_log: Path = Path(tempfile.gettempdir()) / "ipsec-mesh-vm" / "console.log"
    verbose: bool = False
    guest_modules: tuple[str, ...] = GUEST_MODULES
    guest_plugins: tuple[str, ...] = GUEST_PLUGINS


@dataclass
class BatchResult:
    """What came back from one VM run."""

    reports: dict[str, list[dict]] = field(default_factory=dict)  # nodeid -> serialized reports
    collect_errors: list[dict] = field(default_factory=list)  # serialized failed CollectReports
    exit_status: int | None = None  # the guest pytest's exit status, None if it never finished
    console_log: Path | None = None
    boot_seconds: float | None = None  # vng start until the guest script ran
    total_seconds: float = 0.0


def kernel_version(kernel: Path) -> str:
    match = _KERNEL_NAME.match(kernel.name)
    if not match:
        raise VMUnavailable(f"kernel image {kernel} is not named vmlinuz-<version>")
    return match.group("version")


def kernel_has_esp_modules(version: str, modules_root: Path = Path("/lib/modules")) -> bool:
    """True if esp4 and esp6 exist for this kernel, as modules or built in."""
    moddir = modules_root / version
    builtin = moddir / "modules.builtin"
    builtin_text = builtin.read_text() if builtin.is_file() else ""
    for proto in ("ipv4/esp4", "ipv6/esp6"):
        if f"net/{proto}.ko" in builtin_text:
            continue
        if not any((moddir / "kernel" / "net").glob(f"{proto}.ko*")):
            return False
    return True


def find_kernel(boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> Path:
    """The newest /boot/vmlinuz-* whose modules include ESP; VMUnavailable says why not."""
    candidates = sorted(boot.glob("vmlinuz-*"), key=lambda p: _version_key(p.name), reverse=True)
    if not candidates:
        raise VMUnavailable(f"no kernel image {boot}/vmlinuz-* (apt install linux-image-amd64)")
    for kernel in candidates:
        if kernel_has_esp_modules(kernel_version(kernel), modules_root):
            return kernel
    names = ", ".join(p.name for p in candidates)
    raise VMUnavailable(f"no kernel in {boot} has esp4/esp6 modules in {modules_root} ({names})")


def _version_key(name: str) -> list[object]:
    # Numeric parts compare as numbers so 6.10 sorts after 6.9.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+]", name)]


def _find_program(name: str, extra_dirs: list[Path]) -> Path | None:
    search = os.pathsep.join([*map(str, extra_dirs), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    return Path(found) if found else None


def locate(env: Mapping[str, str] = os.environ, *, rootdir: Path) -> VMConfig:
    """Find vng, qemu and a kernel; raise VMUnavailable listing everything missing."""
    venv_bin = Path(sys.executable).parent
    missing: list[str] = []
    vng = _find_program("vng", [venv_bin])
    if vng is None:
        missing.append("vng (pip install virtme-ng into the venv)")
    elif _find_program("virtme-run", [vng.parent, venv_bin]) is None:
        missing.append(f"virtme-run next to {vng} (reinstall virtme-ng)")
    qemu = _find_program("qemu-system-x86_64", [])
    if qemu is None:
        missing.append("qemu-system-x86_64 (apt install qemu-system-x86)")
    kernel = None
    try:
        kernel = _kernel_from_env(env) or find_kernel()
    except VMUnavailable as exc:
        missing.append(str(exc))
    if kernel is not None and not os.access(kernel, os.R_OK):
        missing.append(f"read access to {kernel} (run as root)")
    if missing:
        raise VMUnavailable("; ".join(missing))
    assert vng is not None and qemu is not None and kernel is not None
    default_log = Path(tempfile.gettempdir()) / "ipsec-mesh-vm" / f"{rootdir.name}-console.log"
    return VMConfig(
        vng=vng,
        qemu=qemu,
        kernel=kernel,
        memory=env.get(MEMORY_ENV, "2G"),
        cpus=int(env.get(CPUS_ENV, "2")),
        timeout=float(env.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)),
        console_log=Path(env.get(LOG_ENV, default_log)),
        verbose=env.get(VERBOSE_ENV, "") not in ("", "0"),
        guest_plugins=tuple(filter(None, env.get(PLUGINS_ENV, ",".join(GUEST_PLUGINS)).split(","))),
    )


def _kernel_from_env(env: Mapping[str, str]) -> Path | None:
    value = env.get(KERNEL_ENV)
    if not value:
        return None
    kernel = Path(value)
    if not kernel.is_file():
        raise VMUnavailable(f"{KERNEL_ENV}={value} is not a file")
    if not kernel_has_esp_modules(kernel_version(kernel)):
        raise VMUnavailable(f"{KERNEL_ENV}={value} has no esp4/esp6 modules in /lib/modules")
    return kernel


def host_kernel_has_esp() -> bool:
    """True if the running kernel accepts IPv4 and IPv6 ESP states.

    Probed for real in a throwaway network namespace: a kernel with XFRM but without
    esp4/esp6 refuses the state ("Requested type not found"). Needs root and iproute2.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    netns = f"imesh-esp-probe-{os.getpid()}"
    key = "0x" + "00" * 20  # all-zero key: the state never carries traffic
    probes = [
        ["ip", "netns", "add", netns],
        *(
            ["ip", "-n", netns, "xfrm", "state", "add", "src", src, "dst", dst,
             "proto", "esp", "spi", "0x100", "mode", "transport",
             "aead", "rfc4106(gcm(aes))", key, "128"]
            for src, dst in (("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2"))
        ),
    ]
    try:
        return all(
            subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
            for argv in probes
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)


def guest_script(
    config: VMConfig, rundir: Path, rootdir: Path, test_files: list[str], python: str
) -> str:
    """The shell script the guest runs: environment, modules, then pytest."""
    plugin_args = [arg for plugin in config.guest_plugins for arg in ("-p", plugin)]
    pytest_argv = [
        python, "-m", "pytest", "-p", "no:cacheprovider", *plugin_args, f"--rootdir={rootdir}",
        "-v", "--color=no", "--tb=long", "--durations=0", "--", *test_files,
    ]
    env = {RESULTS_ENV: str(rundir / "reports.jsonl"), NODEIDS_ENV: str(rundir / "nodeids.txt"),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return command_script(config, rundir, rootdir, pytest_argv, python, env, "pytest")


def command_script(
    config: VMConfig, rundir: Path, rootdir: Path, argv: list[str], python: str,
    env: Mapping[str, str] | None = None, label: str = "command",
) -> str:
    """The shell script the guest runs: environment (`env` added), modules, then `argv` in `rootdir`;
    its exit status goes to `rundir/exit_status`."""
    q = shlex.quote
    venv_bin = str(Path(python).parent)
    lines = [
        "#!/bin/sh",
        f"echo {q(GUEST_UP_MARKER)}",
        f"export {IN_VM_ENV}=1",
        *(f"export {name}={q(value)}" for name, value in (env or {}).items()),
        "export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
        f"export PATH={q(venv_bin)}:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    if config.guest_modules:
        lines.append(f"modprobe -a {' '.join(config.guest_modules)} || echo 'modprobe failed' >&2")
    return "\n".join([
        *lines,
        f"cd {q(str(rootdir))} || exit 90",
        f'echo "@@ipsec-mesh-vm: {label} starts at guest uptime $(cut -d" " -f1 /proc/uptime)s"',
        " ".join(q(arg) for arg in argv),
        "status=$?",
        f'echo "@@ipsec-mesh-vm: {label} ended at guest uptime $(cut -d" " -f1 /proc/uptime)s"',
        f"echo $status > {q(str(rundir / 'exit_status'))}",
        "sync",
        "exit $status",
        "",
    ])


def vng_argv(config: VMConfig, rundir: Path, rootdir: Path) -> list[str]:
    argv = [
        str(config.vng), "--disable-kvm", "--force-9p",
        "--run", str(config.kernel), "--user", "root",
        "--memory", config.memory, "--cpus", str(config.cpus),
        "--rwdir", str(rundir), "--cwd", str(rootdir),
        "--qemu", str(config.qemu),
        "--exec", f"sh {shlex.quote(str(rundir / 'guest.sh'))}",
    ]
    if config.verbose:
        argv.append("--verbose")
    return argv


def precompile(rootdir: Path, python: str) -> None:
    """Byte-compile the project on the host: the guest would otherwise compile every module
    at every process start under software emulation (tens of seconds each time)."""
    dirs = [str(rootdir / d) for d in ("sidecar", "operator", "tests") if (rootdir / d).is_dir()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([python, "-m", "compileall", "-q", *dirs], env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


def run_batch(
    nodeids: list[str], rootdir: Path, config: VMConfig, python: str = sys.executable
) -> BatchResult:
    """Boot the VM once, run these pytest node ids inside it, return their reports.

    Raises VMRunError when the VM produced no usable results; the console log (kept at
    config.console_log) then tells why.
    """
    if not nodeids:
        return BatchResult()
    rundir = Path(tempfile.mkdtemp(prefix="ipsec-mesh-vm-"))
    try:
        (rundir / "nodeids.txt").write_text("".join(f"{n}\n" for n in nodeids))
        test_files = sorted({n.split("::", 1)[0] for n in nodeids})
        return run_script(guest_script(config, rundir, rootdir, test_files, python), rundir, rootdir, config, python)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def run_script(script: str, rundir: Path, rootdir: Path, config: VMConfig, python: str = sys.executable) -> BatchResult:
    """Boot the VM once to run `script` (command_script or guest_script); `rundir` is the guest's one
    writable directory of the host's. Benchmarks use it directly (bench/bench_sidecar_memory_vm.py)."""
    precompile(rootdir, python)
    (rundir / "guest.sh").write_text(script)
    result = _boot_and_wait(config, rundir, rootdir)
    _load_results(rundir, result)
    return result


def _boot_and_wait(config: VMConfig, rundir: Path, rootdir: Path) -> BatchResult:
    config.console_log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # vng execs virtme-run by name: the venv's bin must be on PATH.
    env["PATH"] = os.pathsep.join([str(config.vng.parent), env.get("PATH", "")])
    result = BatchResult(console_log=config.console_log)
    started = time.monotonic()
    with open(config.console_log, "w", encoding="utf-8", errors="replace") as log:
        log.write(f"# {shlex.join(vng_argv(config, rundir, rootdir))}\n")
        log.flush()
        proc = subprocess.Popen(
            vng_argv(config, rundir, rootdir), cwd=rootdir, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # so a timeout can kill vng and qemu together
        )
        boot_seen = threading.Event()
        copier = threading.Thread(
            target=_copy_console, args=(proc, log, boot_seen, started, result), daemon=True
        )
        copier.start()
        try:
            proc.wait(timeout=config.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            copier.join(timeout=5)
            raise VMRunError(
                f"VM batch exceeded {config.timeout:.0f}s ({TIMEOUT_ENV}); "
                f"console log: {config.console_log}"
            ) from None
        except BaseException:  # Ctrl-C on the host must not leave qemu running
            _kill_group(proc)
            raise
        copier.join(timeout=10)
    result.total_seconds = time.monotonic() - started
    if not boot_seen.is_set():
        raise VMRunError(
            f"the VM exited (status {proc.returncode}) before the guest ran its script; "
            f"console log: {config.console_log}\n{console_tail(config.console_log)}"
        )
    return result


def _copy_console(
    proc: subprocess.Popen[bytes], log: TextIO, boot_seen: threading.Event,
    started: float, result: BatchResult,
) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", errors="replace")
        if not boot_seen.is_set() and GUEST_UP_MARKER in line:
            result.boot_seconds = time.monotonic() - started
            boot_seen.set()
        log.write(line)
        log.flush()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _load_results(rundir: Path, result: BatchResult) -> None:
    status_file = rundir / "exit_status"
    if status_file.is_file():
        text = status_file.read_text().strip()
        result.exit_status = int(text) if text.isdigit() else None
    reports_file = rundir / "reports.jsonl"
    if not reports_file.is_file():
        return
    for line in reports_file.read_text().splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a guest crash; the rest is still good
        if entry.get("kind") == "collect":
            result.collect_errors.append(entry["report"])
        elif entry.get("kind") == "test":
            result.reports.setdefault(entry["nodeid"], []).append(entry["report"])


def console_tail(path: Path | None, lines: int = 30) -> str:
    """The last lines of a console log, for failure messages."""
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
