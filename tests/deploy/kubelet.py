"""A small kubelet and container runtime: a container of a pod spec, started as a node would start it.

What it does as the kubelet and containerd do: the image's ENV, USER, ENTRYPOINT/CMD and
WORKDIR (read from the Dockerfile's target stage), then the container's command/args with
`$(VAR)` expansion, its env with fieldRef/resourceFieldRef/secretKeyRef resolved, the
service-account volume in-cluster clients read, the pod's volumes (emptyDir as tmpfs,
projected tokens, secrets), the pod's sysctls, the user and groups (no passwd entry), the
capability set containerd gives (default set + add - drop, in the bounding set; what a
non-root uid keeps across exec is nothing, as with runc), no_new_privs for
allowPrivilegeEscalation: false, a read-only root and the pod's hostname, in the pod's
network namespace. The process runs `tests/deploy/container_init.py` as root in its own
mount and UTS namespaces, which builds the root and execs `setpriv`.

What it does not: cgroups (resources are not enforced), seccomp, AppArmor, image layers (the
root is this machine's /usr and /etc plus the image's venv at /opt/ipsec-mesh).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
INIT = Path(__file__).resolve().parent / "container_init.py"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# What the python base image sets (docker inspect python:3.11-slim), under the Dockerfile's ENV.
BASE_IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# containerd's default capabilities of a container (before capabilities.add/drop).
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
                "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")


class KubeletError(Exception):
    """The pod cannot start as specified (the kubelet's CreateContainerConfigError and the like)."""


# ---- the image ------------------------------------------------------------------


@dataclass
class Image:
    env: dict[str, str]
    user: str = "0"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: str = "/"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def image_config(target: str, dockerfile: Path = ROOT / "Dockerfile") -> Image:
    """The configuration of the Dockerfile's stage `target`, following `FROM <stage>` chains."""
    stages: dict[str, list[tuple[str, str]]] = {}
    parents: dict[str, str] = {}
    current = None
    for keyword, rest in _instructions(dockerfile):
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            current = match.group(2) or f"stage{len(stages)}"
            stages[current], parents[current] = [], match.group(1)
        elif current is not None:
            stages[current].append((keyword, rest))
    chain, name = [], target
    while name in stages:
        chain.insert(0, name)
        name = parents[name]
    if not chain:
        raise KubeletError(f"no stage {target} in {dockerfile}")
    image = Image(env=dict(BASE_IMAGE_ENV))
    for stage in chain:
        for keyword, rest in stages[stage]:
            if keyword == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    image.env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: image.env.get(m.group(1), ""), value)
            elif keyword == "USER":
                image.user = rest
            elif keyword == "CMD":
                image.cmd = json.loads(rest)
            elif keyword == "ENTRYPOINT":
                image.entrypoint, image.cmd = json.loads(rest), []
            elif keyword == "WORKDIR":
                image.workdir = rest
    return image


# ---- env, command, security -----------------------------------------------------


_QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {None: 1, "m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
            "Ti": 2**40}


def quantity(text: str) -> float:
    match = _QUANTITY.match(str(text))
    if not match:
        raise KubeletError(f"not a quantity: {text!r}")
    return float(match.group(1)) * _FACTORS[match.group(2)]


def _field(pod: dict[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    item = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if item:
        return (meta.get(item.group(1)) or {}).get(item.group(2), "")
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"), "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"), "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": status.get("hostIP"), "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
    }
    if path not in simple or simple[path] is None:
        raise KubeletError(f"fieldRef {path} is not supported or not set")
    return simple[path]


def _resource(container: dict[str, Any], ref: dict[str, Any]) -> str:
    kind, _, name = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None:
        raise KubeletError(f"resourceFieldRef {ref['resource']}: not set (the kubelet would use the node's allocatable)")
    divisor = quantity(ref.get("divisor", "1"))
    return str(int(-(-quantity(value) // divisor)))  # rounded up, as the kubelet does


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, others stay."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def resolve_env(pod: dict[str, Any], container: dict[str, Any], image: Image,
                secrets: dict[tuple[str, str], str] | None = None, services: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment: image ENV, service variables, then the container's env in order."""
    env = dict(image.env)
    env.update(services or {})
    env.setdefault("HOME", "/")  # containerd: from /etc/passwd, else /
    env["HOSTNAME"] = pod["metadata"]["name"]
    for item in container.get("env") or []:
        if "value" in item or "valueFrom" not in item:
            env[item["name"]] = expand(str(item.get("value", "")), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[item["name"]] = _resource(container, source["resourceFieldRef"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            key = (ref["name"], ref["key"])
            if key not in (secrets or {}):
                if ref.get("optional"):
                    continue
                raise KubeletError(f"secret {ref['name']} has no key {ref['key']}")
            env[item["name"]] = secrets[key]
        else:
            raise KubeletError(f"env {item['name']}: unsupported source {sorted(source)}")
    return env


def command_line(container: dict[str, Any], image: Image, env: dict[str, str]) -> list[str]:
    if container.get("command"):
        argv = list(container["command"]) + list(container.get("args") or [])
    else:
        argv = list(image.entrypoint) + list(container.get("args") or image.cmd)
    return [expand(arg, env) for arg in argv]


@dataclass
class Security:
    uid: int
    gid: int
    groups: list[int]
    caps: list[str]
    no_new_privs: bool
    read_only_root: bool
    sysctls: dict[str, str]


def security(pod: dict[str, Any], container: dict[str, Any], image: Image) -> Security:
    pod_sc, sc = pod["spec"].get("securityContext") or {}, container.get("securityContext") or {}
    image_uid, _, image_gid = image.user.partition(":")
    uid = sc.get("runAsUser", pod_sc.get("runAsUser", int(image_uid)))
    # A runAsUser without runAsGroup takes the uid's group from the image's /etc/passwd: none here, so 0.
    overridden = "runAsUser" in sc or "runAsUser" in pod_sc
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", 0 if overridden else int(image_gid or 0)))
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
        raise KubeletError("container has runAsNonRoot and image will run as root")
    if sc.get("privileged"):
        raise KubeletError("privileged containers are not run here")
    capabilities = sc.get("capabilities") or {}
    drop = {c.upper() for c in capabilities.get("drop") or []}
    caps = [] if "ALL" in drop else [c for c in DEFAULT_CAPS if c not in drop]
    caps += [c.upper() for c in capabilities.get("add") or [] if c.upper() not in caps]
    groups = list(pod_sc.get("supplementalGroups") or []) + ([pod_sc["fsGroup"]] if "fsGroup" in pod_sc else [])
    return Security(uid=uid, gid=gid, groups=groups, caps=caps,
                    no_new_privs=sc.get("allowPrivilegeEscalation", True) is False,
                    read_only_root=bool(sc.get("readOnlyRootFilesystem")),
                    sysctls={s["name"]: str(s["value"]) for s in pod_sc.get("sysctls") or []})


def port_number(container: dict[str, Any], port: Any) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return item["containerPort"]
    raise KubeletError(f"no container port named {port!r}")


# ---- starting it -----------------------------------------------------------------


@dataclass
class PodRuntime:
    """Where a pod's containers run: its network namespace, volumes' contents and the image venv."""

    netns: str
    workdir: Path  # scratch for this pod (root-only is fine: container_init runs as root)
    image_venv: Path  # mounted at /opt/ipsec-mesh, as the image has it
    volume_sources: dict[str, Path] = field(default_factory=dict)  # volume name -> directory with its files
    hosts: str = ""  # /etc/hosts lines (Service names: what cluster DNS would answer)


def launch(pod: dict[str, Any], container: dict[str, Any], image: Image, runtime: PodRuntime, *,
           env: dict[str, str], log: Path, security_override: Security | None = None,
           ambient: bool = False) -> subprocess.Popen:
    """Start `container` of `pod` as specified; `ambient` raises its added capabilities to the ambient set
    (what Kubernetes cannot do; for the non-root experiment only)."""
    sec = security_override or security(pod, container, image)
    volumes = []
    by_name = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = by_name.get(mount["name"])
        if volume is None:
            raise KubeletError(f"volumeMount {mount['name']}: no such volume")
        if "emptyDir" in volume:
            size = (volume["emptyDir"] or {}).get("sizeLimit")
            volumes.append({"path": mount["mountPath"], "tmpfs": True,
                            "size": int(quantity(size)) if size else None, "read_only": bool(mount.get("readOnly"))})
        elif mount["name"] in runtime.volume_sources:
            volumes.append({"path": mount["mountPath"], "source": str(runtime.volume_sources[mount["name"]]),
                            "read_only": True if "projected" in volume or "secret" in volume else
                            bool(mount.get("readOnly"))})
        else:
            raise KubeletError(f"volume {mount['name']}: no contents given for {sorted(volume)}")
    if "kube-api-access" in runtime.volume_sources and pod["spec"].get("automountServiceAccountToken", True):
        volumes.append({"path": SERVICE_ACCOUNT_DIR, "source": str(runtime.volume_sources["kube-api-access"]),
                        "read_only": True})
    spec = {
        "argv": command_line(container, image, env), "env": env, "workdir": container.get("workingDir") or image.workdir,
        "hostname": pod["metadata"]["name"], "uid": sec.uid, "gid": sec.gid, "groups": sec.groups, "caps": sec.caps,
        "ambient": ambient, "no_new_privs": sec.no_new_privs, "read_only_root": sec.read_only_root,
        "sysctls": sec.sysctls, "volumes": volumes, "hosts": runtime.hosts,
        "image": str(runtime.image_venv), "python_prefix": sys.base_prefix,
    }
    spec_path = runtime.workdir / f"{container['name']}.json"
    spec_path.write_text(json.dumps(spec))
    with open(log, "wb") as out:
        return subprocess.Popen(["ip", "netns", "exec", runtime.netns, "unshare", "--uts", "--mount",
                                 "--propagation", "private", sys.executable, "-I", str(INIT), str(spec_path)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
