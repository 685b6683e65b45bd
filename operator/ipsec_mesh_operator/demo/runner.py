"""The demo itself: topology, credentials, sidecars, traffic, report, cleanup."""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ipsec_mesh.meshapi import fields
from ipsec_mesh.meshapi.errors import PeerMapError

from ..ca import CertificateAuthority, LeafIdentity

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
STATUS_PORT = 9741
CLONE_NEWNET = 0x40000000
SIDECAR_START_TIMEOUT = 600.0  # under software emulation a Python process starts slowly


class DemoError(RuntimeError):
    pass


# -- the demo's YAML ----------------------------------------------------------------------

@dataclass(frozen=True)
class Pod:
    name: str
    address: str


@dataclass(frozen=True)
class Peering:
    name: str
    members: tuple[str, ...]
    peers: tuple[str, ...]  # empty: the members peer with each other
    enforcement: str
    proposals: dict
    lifetimes: dict


@dataclass(frozen=True)
class DemoConfig:
    network: ipaddress.IPv4Network
    trust_domain: str
    pods: tuple[Pod, ...]
    peerings: tuple[Peering, ...]

    def identity(self, pod: str) -> str:
        return f"{pod}.default.pod.{self.trust_domain}"

    def pod(self, name: str) -> Pod:
        for p in self.pods:
            if p.name == name:
                return p
        raise DemoError(f"no pod named {name}")

    def peers_of(self, pod: str) -> list[tuple[Peering, list[Pod]]]:
        """Per peering `pod` is in: the pods it may talk to over that peering."""
        out = []
        for peering in self.peerings:
            if pod not in peering.members:
                continue
            names = peering.peers or tuple(m for m in peering.members if m != pod)
            out.append((peering, [self.pod(n) for n in names]))
        return out


def load_config(path: Path) -> DemoConfig:
    document = yaml.safe_load(path.read_text())
    doc = fields.obj(document, "", {"network", "pods", "peerings"}, {"trustDomain"})
    network = ipaddress.ip_network(fields.string(doc["network"], "network"))
    pods = fields.array(doc["pods"], "pods", lambda v, p: _pod(v, p, network), 16, 2)
    names = {p.name for p in pods}
    peerings = fields.array(doc["peerings"], "peerings", lambda v, p: _peering(v, p, names), 16, 1)
    return DemoConfig(network, fields.string(doc.get("trustDomain", "demo.mesh.local"), "trustDomain"),
                      pods, peerings)


def _pod(value, path, network) -> Pod:
    doc = fields.obj(value, path, {"name", "address"})
    address = fields.address(doc["address"], f"{path}.address")
    if address not in network:
        raise PeerMapError(f"{path}.address", f"{address} is outside {network}")
    return Pod(fields.string(doc["name"], f"{path}.name", 12), str(address))


def _peering(value, path, names) -> Peering:
    doc = fields.obj(value, path, {"name", "members"}, {"peers", "enforcement", "proposals", "lifetimes"})
    members = fields.array(doc["members"], f"{path}.members", fields.string, 16, 1)
    peers = fields.array(doc.get("peers", []), f"{path}.peers", fields.string, 16)
    for name in (*members, *peers):
        if name not in names:
            raise PeerMapError(path, f"unknown pod {name!r}")
    return Peering(fields.string(doc["name"], f"{path}.name"), members, peers,
                   doc.get("enforcement", "require"), dict(doc.get("proposals", {})), dict(doc.get("lifetimes", {})))


# -- namespaces ---------------------------------------------------------------------------

def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise DemoError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


def in_netns(netns: str, function, *args, timeout: float = 60):
    """Call `function` in a thread that has entered `netns` (the caller's namespace is untouched)."""
    outcome: dict = {}

    def body():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed back to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise DemoError(f"a call in {netns} did not finish in {timeout:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def kernel_has_esp() -> bool:
    """Try to add an ESP SA in a throw-away namespace."""
    name = f"ipsec-mesh-probe-{os.getpid()}"
    try:
        sh("ip", "netns", "add", name)
    except (DemoError, FileNotFoundError):
        return False
    try:
        key = "0x" + "11" * 36
        result = sh("ip", "-n", name, "xfrm", "state", "add", "src", "10.255.0.1", "dst", "10.255.0.2",
                    "proto", "esp", "spi", "0x1000", "mode", "transport", "aead", "rfc4106(gcm(aes))", key,
                    "128", check=False)
        return result.returncode == 0
    finally:
        sh("ip", "netns", "del", name, check=False)


class Sidecar:
    def __init__(self, demo: "Demo", pod: Pod, workdir: Path):
        self.demo, self.pod, self.dir = demo, pod, workdir
        self.netns = demo.netns(pod.name)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.dir / "sidecar.log", "wb")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "ipsec_mesh.agent.cli", "run",
             "--config", str(self.dir / "sidecar.yaml")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def status(self) -> dict | None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(f"the sidecar of {self.pod.name} exited:\n{self.log()[-2000:]}")
        try:
            return in_netns(self.netns, _get_json, f"http://127.0.0.1:{STATUS_PORT}/status")
        except OSError:
            return None

    def log(self) -> str:
        path = self.dir / "sidecar.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


# -- the demo -----------------------------------------------------------------------------

class Demo:
    def __init__(self, config: DemoConfig, out=sys.stdout):
        self.config = config
        self.out = out
        self.prefix = f"imd{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self.sidecars: dict[str, Sidecar] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="ipsec-mesh-demo-"))
        self.capture: subprocess.Popen | None = None

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def netns(self, pod: str) -> str:
        return f"{self.prefix}-{pod}"

    # topology
    def build_network(self) -> None:
        node = f"{self.prefix}-node"
        sh("ip", "netns", "add", node)
        self.namespaces.append(node)
        sh("ip", "-n", node, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", node, "link", "set", "br0", "up")
        prefix = self.config.network.prefixlen
        for pod in self.config.pods:
            ns = self.netns(pod.name)
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            host_side = f"v-{pod.name}"[:15]
            sh("ip", "-n", node, "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", node, "link", "set", host_side, "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{pod.address}/{prefix}", "dev", "eth0")

    # credentials and peer maps
    def write_configs(self) -> None:
        now = time.time()
        ca = CertificateAuthority.create(now, max_leaf_lifetime=86400, lifetime=7 * 86400)
        bundle = list(ca.trust_bundle(now))
        for pod in self.config.pods:
            pod_dir = self.workdir / pod.name
            pod_dir.mkdir()
            identity = self.config.identity(pod.name)
            # The pod's key never leaves its directory: the CA signs a CSR, as the mesh API does.
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
                   .sign(key, hashes.SHA256()))
            cert = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), LeafIdentity(dns_name=identity),
                               86400, now)
            (pod_dir / "key.pem").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            (pod_dir / "key.pem").chmod(0o600)
            (pod_dir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            peerings = []
            for peering, peers in self.config.peers_of(pod.name):
                entry = {"name": peering.name, "authentication": "certificate",
                         "enforcement": peering.enforcement,
                         "peers": [{"name": p.name, "addresses": [f"{p.address}/32"],
                                    "identities": [self.config.identity(p.name)]} for p in peers]}
                if peering.proposals:
                    entry["proposals"] = peering.proposals
                if peering.lifetimes:
                    entry["lifetimes"] = peering.lifetimes
                peerings.append(entry)
            document = {
                "peerMap": {"local": {"identity": identity, "addresses": [pod.address]},
                            "trustBundle": bundle, "peerings": peerings},
                "certificate": {"cert": "cert.pem", "key": "key.pem"},
                "dataplane": "xfrm",
                "status": {"listen": f"127.0.0.1:{STATUS_PORT}"},
                "ike": {"retransmitTimeout": 1, "retransmitTries": 3},
            }
            (pod_dir / "sidecar.yaml").write_text(yaml.safe_dump(document))
            self.sidecars[pod.name] = Sidecar(self, pod, pod_dir)

    def start_sidecars(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.start()
        deadline = time.monotonic() + SIDECAR_START_TIMEOUT
        for name, sidecar in self.sidecars.items():
            while True:
                status = sidecar.status()
                if status and status["ready"]:
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"the sidecar of {name} did not become ready:\n{sidecar.log()[-2000:]}")
                time.sleep(0.5)
            self.say(f"  ✔ {name:9} {status['identity']}  policies in place, ready")

    # traffic
    def ping(self, src: str, dst: Pod, count: int = 3, deadline: int = 30) -> bool:
        result = sh("ip", "netns", "exec", self.netns(src), "ping", "-c", str(count), "-w", str(deadline),
                    "-i", "0.3", dst.address, check=False, timeout=deadline + 10)
        return result.returncode == 0

    def tcp(self, client: str, server: Pod, size: int = 256 * 1024) -> bool:
        payload = os.urandom(size)
        listener = in_netns(self.netns(server.name), _listen, server.address, 7000)
        received: dict = {}
        thread = threading.Thread(target=_accept_all, args=(listener, received), daemon=True)
        thread.start()
        in_netns(self.netns(client), _send, server.address, 7000, payload)
        thread.join(60)
        return received.get("data") == payload

    def start_capture(self, pod: str) -> Path:
        pcap = self.workdir / "wire.pcap"
        self.capture = subprocess.Popen(
            ["ip", "netns", "exec", f"{self.prefix}-node", "tcpdump", "-i", f"v-{pod}"[:15], "-n", "-U",
             "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        return pcap

    def stop_capture(self, pcap: Path) -> list[str]:
        if self.capture is not None:
            time.sleep(0.5)
            self.capture.send_signal(signal.SIGINT)
            self.capture.wait(10)
            self.capture = None
        return sh("tcpdump", "-n", "-r", str(pcap), check=False).stdout.splitlines()

    # the story
    def run(self) -> int:
        cfg = self.config
        self.say("ipsec-mesh demo: per-pod IKEv2 and transport-mode ESP, on this machine\n")
        self.say(f"[1/6] pods on the pod network {cfg.network} (network namespaces on a bridge)")
        self.build_network()
        for pod in cfg.pods:
            self.say(f"  ✔ {pod.name:9} {pod.address}")
        self.say("\n[2/6] mesh CA issues each pod a certificate (its key stays in the pod); peer maps from the peerings")
        self.write_configs()
        for peering in cfg.peerings:
            link = (" <-> ".join(peering.members) if not peering.peers
                    else f"{', '.join(peering.members)} -> {', '.join(peering.peers)} (one-sided)")
            self.say(f"  ✔ peering {peering.name}: {link}, {peering.enforcement}")
        self.say("\n[3/6] a sidecar in every pod (policies first, then IKE on UDP 500/4500)")
        self.start_sidecars()
        web, db = cfg.pod("web"), cfg.pod("db")
        self.say("\n[4/6] web talks to db: the first packet makes the kernel ask for an SA (ACQUIRE)")
        pcap = self.start_capture("web")
        started = time.monotonic()
        ok_ping = self.ping("web", db, count=3, deadline=60)
        elapsed = time.monotonic() - started
        ok_tcp = self.tcp("web", db)
        self.say(f"  {'✔' if ok_ping else '✘'} ping web -> db answered ({elapsed:.1f} s including IKE)")
        self.say(f"  {'✔' if ok_tcp else '✘'} 256 KiB over TCP from web to db arrived intact")
        status = self.sidecars["web"].status() or {"ike_sas": []}
        for sa in status["ike_sas"]:
            self.say(f"  IKE SA  {sa['local']} <-> {sa['remote']}  {sa['remote_id']}")
            self.say(f"          {sa['algorithm']}")
            for child in sa["children"]:
                self.say(f"  ESP SA  in {child['inbound_spi']} / out {child['outbound_spi']}  {child['algorithm']}"
                         f"  {child['mode']}")
        intruder = cfg.pod("intruder") if any(p.name == "intruder" for p in cfg.pods) else None
        self.say("\n[5/6] the intruder (valid mesh certificate, no peering with web) tries web")
        ok_intruder = True
        if intruder is not None:
            answered = self.ping("intruder", web, count=2, deadline=6)
            web_counters = (self.sidecars["web"].status() or {}).get("counters", {})
            refused = web_counters.get("refused_unknown_peer", 0)
            ok_intruder = not answered
            self.say(f"  {'✔' if not answered else '✘'} intruder -> web: no answer")
            self.say(f"  ✔ web refused {refused} IKE_SA_INIT from {intruder.address}: not a peer")
        lines = self.stop_capture(pcap)
        # IP packets only: ARP (who-has db tell web) names both addresses but is not IP traffic.
        lines = [line for line in lines if " ARP," not in line]
        between = [line for line in lines if web.address in line and db.address in line]
        esp = [line for line in between if " ESP(" in line]
        ike = [line for line in between if ".500:" in line or ".4500:" in line or "isakmp" in line.lower()]
        plain = [line for line in between if line not in esp and line not in ike]
        leaked = [line for line in lines if intruder and intruder.address in line and web.address in line
                  and "ICMP" in line and " ESP(" not in line]
        self.say(f"  on the wire next to web: {len(esp)} ESP packets and {len(ike)} IKE packets between web and db,"
                 f" {len(plain)} in plaintext; {len(leaked)} plaintext packets between intruder and web")
        for line in (plain + leaked)[:5]:
            self.say(f"    plaintext: {line}")
        self.say("\n[6/6] a rekey, live: the CHILD_SA lifetime is short; pings keep flowing")
        ok_rekey = self.watch_rekey(web, db)
        ok = ok_ping and ok_tcp and ok_intruder and not plain and not leaked and ok_rekey
        self.say("\n" + ("✔ done: only ESP between the peered pods, the outsider refused, a rekey seen"
                         if ok else "✘ something did not go as expected (see above)"))
        return 0 if ok else 1

    def watch_rekey(self, web: Pod, db: Pod, timeout: float = 120) -> bool:
        def spis() -> tuple[str, ...]:
            status = self.sidecars["web"].status() or {"ike_sas": []}
            return tuple(c["inbound_spi"] for sa in status["ike_sas"] for c in sa["children"]
                         if c["state"] == "installed")

        before = spis()
        deadline = time.monotonic() + timeout
        lost = 0
        while time.monotonic() < deadline:
            if not self.ping("web", db, count=1, deadline=5):
                lost += 1
            now = spis()
            if now and before and not set(now) & set(before):
                self.say(f"  ✔ rekeyed: inbound SPI {', '.join(before)} -> {', '.join(now)};"
                         f" {lost} pings lost meanwhile")
                return lost == 0
            time.sleep(1)
        self.say("  ✘ no rekey within the time allowed")
        return False

    def cleanup(self) -> None:
        if self.capture is not None:
            self.capture.kill()
        for sidecar in self.sidecars.values():
            sidecar.stop()
        for ns in reversed(self.namespaces):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        left = [ns for ns in sh("ip", "netns", "list", check=False).stdout.split() if ns.startswith(self.prefix)]
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.say(f"\ncleaned up: {len(self.sidecars)} sidecars stopped, {len(self.namespaces)} namespaces removed"
                 + (f" ({len(left)} left: {left})" if left else ", nothing left behind"))


def _listen(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(1)
    s.settimeout(60)
    return s


def _accept_all(listener: socket.socket, out: dict) -> None:
    try:
        conn, _ = listener.accept()
        conn.settimeout(60)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        out["data"] = b"".join(chunks)
        conn.close()
    except OSError:
        pass
    finally:
        listener.close()


def _send(address: str, port: int, payload: bytes) -> None:
    with socket.create_connection((address, port), timeout=60) as s:
        s.sendall(payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipsec-mesh demo", description="a small mesh on this machine")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="demo YAML (default: the embedded one)")
    parser.add_argument("--no-vm", action="store_true", help="never fall back to the VM")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo creates network namespaces: run it as root", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except (PeerMapError, OSError, yaml.YAMLError) as exc:
        print(f"demo configuration: {exc}", file=sys.stderr)
        return 2
    if not kernel_has_esp():
        if args.no_vm:
            print("this kernel has no ESP (esp4/esp6) and --no-vm was given", file=sys.stderr)
            return 2
        from .vm import VmUnavailable, run_in_vm

        print(f"This kernel ({os.uname().release}) has XFRM but no ESP, so ESP SAs cannot be installed here.\n"
              "Running the same demo inside a VM with Debian's kernel (virtme-ng, software emulation:\n"
              "it takes a few minutes, most of it Python starting up under emulation).\n", flush=True)
        try:
            return run_in_vm([sys.executable, "-m", "ipsec_mesh_operator.cli", "demo", "--no-vm",
                              "--config", str(args.config.resolve())])
        except VmUnavailable as exc:
            print(f"cannot run the VM: {exc}", file=sys.stderr)
            return 2
    demo = Demo(config)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return demo.run()
    except KeyboardInterrupt:
        demo.say("\ninterrupted")
        return 130
    except DemoError as exc:
        demo.say(f"\n✘ {exc}")
        return 1
    finally:
        demo.cleanup()
        signal.signal(signal.SIGTERM, previous)
