"""Run a command inside a VM whose kernel has ESP, for machines whose kernel has none.

Uses virtme-ng (`vng`, from the project's virtualenv) to boot a Debian kernel from
/boot with the host's root filesystem over 9p, under software emulation.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


class VmUnavailable(RuntimeError):
    pass


def kernel_with_esp(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> Path:
    candidates = []
    for kernel in sorted(boot.glob("vmlinuz-*"), reverse=True):
        version = kernel.name[len("vmlinuz-"):]
        tree = modules / version
        has_esp = any(tree.rglob("esp4.ko*")) or "esp4.ko" in _read(tree / "modules.builtin")
        if has_esp:
            candidates.append(kernel)
    if not candidates:
        raise VmUnavailable("no kernel with ESP in /boot (apt-get install linux-image-amd64)")
    return candidates[0]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _program(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if (Path(directory) / name).exists():
            return str(Path(directory) / name)
    raise VmUnavailable(f"{name} not found (pip install virtme-ng; apt-get install qemu-system-x86)")


def run_in_vm(argv: list[str], *, memory: str = "2G", cpus: int = 2, timeout: float = 1800) -> int:
    """Run `argv` (as root, cwd unchanged) in the VM; its output streams to ours; its exit status."""
    kernel = kernel_with_esp()
    vng = _program("vng")
    _program("qemu-system-x86_64")
    _precompile()
    with tempfile.TemporaryDirectory(prefix="ipsec-mesh-demo-vm-") as rundir:
        status_file = Path(rundir) / "status"
        script = Path(rundir) / "guest.sh"
        script.write_text("\n".join([
            "#!/bin/sh",
            f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:/usr/sbin:/usr/bin:/sbin:/bin",
            "export PYTHONUNBUFFERED=1",
            "modprobe -a esp4 esp6 xfrm_user veth bridge 2>/dev/null",
            f"cd {shlex.quote(os.getcwd())}",
            " ".join(shlex.quote(a) for a in argv),
            f"echo $? > {shlex.quote(str(status_file))}",
            "sync",
        ]) + "\n")
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        command = [vng, "--disable-kvm", "--force-9p", "--run", str(kernel), "--user", "root",
                   "--memory", memory, "--cpus", str(cpus), "--rwdir", rundir, "--cwd", os.getcwd(),
                   "--exec", f"sh {shlex.quote(str(script))}"]
        # Relay through a pipe: QEMU opens our stdout by path, which would truncate a file.
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            proc.wait()
        finally:
            timer.cancel()
        if proc.returncode == -9:
            print(f"the VM did not finish within {timeout:.0f} s", file=sys.stderr)
            return 124
        try:
            return int(status_file.read_text().strip() or 1)
        except (OSError, ValueError):
            print("the VM ended without running the demo (see the output above)", file=sys.stderr)
            return 1


def _precompile() -> None:
    """Compile our modules once on the host: under emulation every compile is slow."""
    import ipsec_mesh
    import ipsec_mesh_operator

    dirs = [str(Path(m.__file__).parent) for m in (ipsec_mesh, ipsec_mesh_operator)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
