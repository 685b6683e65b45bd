"""The container runtime's part, run as root in the pod's network namespace and a new mount and UTS
namespace (tests/deploy/kubelet.py starts it): build the container's root, then exec `setpriv`.

The root is a tmpfs with this machine's /usr and /etc (read-only binds), the interpreter the
image venv uses, the image venv at /opt/ipsec-mesh (and at its own path, which its scripts'
shebangs name), /dev, /proc, /sys, and the pod's volumes; made read-only where the spec says
readOnlyRootFilesystem, so anything the process writes outside its volumes fails with EROFS as
in the cluster. Standard library only (runs with `python -I`).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def bind(source: str, target: Path, read_only: bool = True) -> None:
    if Path(source).is_dir():
        target.mkdir(parents=True, exist_ok=True)
    elif not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    mount("--rbind", source, str(target))
    if read_only:
        mount("-o", "remount,bind,ro", str(target))


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    socket.sethostname(spec["hostname"])
    for name, value in spec["sysctls"].items():  # namespaced sysctls of the pod (its own netns)
        Path("/proc/sys", *name.split(".")).write_text(value)
    root = Path(spec_path).with_suffix(".rootfs")
    root.mkdir(exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=755", "rootfs", str(root))
    for name in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{name}"):
            os.symlink(os.readlink(f"/{name}"), root / name)
    for path in ("/usr", "/etc", spec["python_prefix"], spec["image"]):
        bind(path, root / path.lstrip("/"))
    bind(spec["image"], root / "opt/ipsec-mesh")
    for path in ("/dev", "/proc", "/sys"):
        bind(path, root / path.lstrip("/"), read_only=False)
    for volume in spec["volumes"]:
        target = root / volume["path"].lstrip("/")
        if volume.get("tmpfs"):
            target.mkdir(parents=True, exist_ok=True)
            size = f",size={volume['size']}" if volume.get("size") else ""
            mount("-t", "tmpfs", "-o", f"mode=1777{size}", "emptydir", str(target))
        else:
            bind(volume["source"], target, read_only=volume["read_only"])
    if spec["hosts"]:
        hosts = Path(spec_path).with_suffix(".hosts")
        hosts.write_text(spec["hosts"])
        bind(str(hosts), root / "etc/hosts")
    (root / "tmp").mkdir(exist_ok=True)  # only a mount point: without a volume it is read-only too
    if spec["read_only_root"]:
        mount("-o", "remount,ro", str(root))
    os.chroot(root)
    os.chdir(spec["workdir"])
    caps = ",".join(["-all"] + [f"+{c.lower()}" for c in spec["caps"]])
    inheritable = caps if spec["ambient"] else "-all"
    argv = ["setpriv", f"--reuid={spec['uid']}", f"--regid={spec['gid']}",
            f"--groups={','.join(map(str, spec['groups']))}" if spec["groups"] else "--clear-groups",
            f"--bounding-set={caps}", f"--inh-caps={inheritable}"]
    if spec["ambient"]:
        argv.append(f"--ambient-caps={caps}")
    if spec["no_new_privs"]:
        argv.append("--no-new-privs")
    os.execve("/usr/bin/setpriv", argv + ["--", *spec["argv"]], spec["env"])


if __name__ == "__main__":
    main(sys.argv[1])
