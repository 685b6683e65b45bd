"""The demo itself: topology, the standalone operator, sidecars, traffic, report, cleanup."""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..controller.index import PodInfo
from ..netns import NetnsError, add_netns, add_veth, delete_netns, in_netns, ip, kill_netns_processes, run
from ..standalone.config import StandaloneConfigError
from .config import DemoConfig, DemoError, DemoService, load_config
from .netns import accept_all, answer_once, ask, kernel_has_esp, listen, send
from .processes import START_TIMEOUT, Sidecar, StandaloneOperatorProcess

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")

__all__ = ["DEFAULT_CONFIG", "Demo", "DemoError", "Wire", "kernel_has_esp", "load_config", "main", "read_wire"]


def _mentions(line: str, address: str) -> bool:
    """Whether a tcpdump line names `address` as a whole (tcpdump writes ADDRESS or ADDRESS.PORT)."""
    return re.search(rf"(?<![\d.]){re.escape(address)}(?:\.\d+)?(?=[ :,])", line) is not None


@dataclass
class Wire:
    """What tcpdump saw between two pods, and to or from a ClusterIP (which must never be on the wire)."""

    esp: list[str] = field(default_factory=list)
    ike: list[str] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)
    cluster_ip: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.plain and not self.cluster_ip


def read_wire(lines: list[str], a: str, b: str, cluster_ip: str | None = None) -> Wire:
    wire = Wire()
    # IP packets only: ARP (who-has db tell web) names both addresses but is not IP traffic.
    for line in (line for line in lines if " ARP," not in line):
        if cluster_ip is not None and _mentions(line, cluster_ip):
            wire.cluster_ip.append(line)
        elif _mentions(line, a) and _mentions(line, b):
            if " ESP(" in line:
                wire.esp.append(line)
            elif ".500:" in line or ".4500:" in line or "isakmp" in line.lower():
                wire.ike.append(line)
            else:
                wire.plain.append(line)
    return wire


@dataclass
class Call:
    """A request and its answer over TCP, as both ends' kernels saw them."""

    intact: bool
    #: Where the client's socket was connected to, and where the server accepted it (address, port).
    client_peer: tuple[str, int] | None
    server_local: tuple[str, int] | None
    server_peer: tuple[str, int] | None


class Demo:
    def __init__(self, config: DemoConfig, out=sys.stdout):
        self.config = config
        self.out = out
        self.prefix = f"imd{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self.sidecars: dict[str, Sidecar] = {}
        self.operator: StandaloneOperatorProcess | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="ipsec-mesh-demo-"))
        self.capture: subprocess.Popen | None = None

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    @property
    def node(self) -> str:
        return f"{self.prefix}-node"

    def netns(self, pod: str) -> str:
        return f"{self.prefix}-{pod}"

    def veth(self, pod: str) -> str:
        return f"v{[p.name for p in self.config.pods].index(pod)}-{pod}"[:15]

    # topology
    def build_network(self, routed: bool = False) -> None:
        """Pods on one bridge in the node namespace. `routed`: each pod holds its address as a /32
        and sends everything through the node (as Calico's routed pod network does), so a pod keeps
        one neighbour entry instead of one per peer: the kernel's ARP table (1,024 entries by
        default) is shared by every namespace, and 100 pods that all talk overflow it on a bridge."""
        add_netns(self.node)
        self.namespaces.append(self.node)
        prefix = self.config.network.prefixlen
        if routed:
            for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                        "net.ipv4.conf.default.send_redirects=0"):
                run("ip", "netns", "exec", self.node, "sysctl", "-qw", key)
        run("ip", "-n", self.node, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.node, "addr", "add", f"{self.config.node_address}/{prefix}", "dev", "br0")
        run("ip", "-n", self.node, "link", "set", "br0", "up")
        for pod in self.config.pods:
            ns = self.netns(pod.name)
            add_netns(ns)
            self.namespaces.append(ns)
            host_side = self.veth(pod.name)
            add_veth(self.node, host_side, ns, "eth0", up=False)  # the node's end goes up once on the bridge
            ip("link", "set", host_side, "master", "br0", "up", netns=self.node)
            ip("link", "set", "eth0", "up", netns=ns)
            run("ip", "-n", ns, "addr", "add", f"{pod.ips[0]}/{32 if routed else prefix}", "dev", "eth0")
            if routed:
                run("ip", "-n", ns, "route", "add", self.config.node_address, "dev", "eth0")
            # As in a cluster: all else (a ClusterIP the pod does not translate) goes to the node.
            run("ip", "-n", ns, "route", "add", "default", "via", self.config.node_address)

    # the operator
    def write_operator_config(self, pods: list[str] | None = None) -> Path:
        """The standalone operator's YAML with the config's pods (only those named in `pods`, if given)."""
        config_path = self.workdir / "mesh.yaml"
        document = dict(self.config.operator_document)
        # Each pod's namespace, so that explain (on this node, as root) reads its sidecar's local /status.
        document["pods"] = [{**pod, "netns": self.netns(pod["name"])} for pod in document["pods"]
                            if pods is None or pod["name"] in pods]
        config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        return config_path

    def start_operator(self, pods: list[str] | None = None, metrics_port: int = 0) -> dict:
        self.operator = StandaloneOperatorProcess(self.node, self.config.node_address,
                                                  self.write_operator_config(pods), self.workdir / "operator",
                                                  metrics_port=metrics_port)
        self.operator.start()
        self.operator.wait_serving()
        return self.operator.overview()

    # sidecars
    def start_sidecars(self, pods: list[str] | None = None, settings: dict | None = None) -> None:
        """A sidecar in each pod (those named in `pods`, if given), then wait until each is ready."""
        assert self.operator is not None
        for pod in self.config.pods:
            if pods is not None and pod.name not in pods:
                continue
            sidecar = Sidecar(pod, self.netns(pod.name), self.workdir / "pods" / pod.name, settings)
            sidecar.start(self.operator)
            self.sidecars[pod.name] = sidecar
        deadline = time.monotonic() + START_TIMEOUT
        for name, sidecar in self.sidecars.items():
            while True:
                status = sidecar.status()
                if status and status.get("ready"):
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"the sidecar of {name} did not become ready:\n{sidecar.log()[-2000:]}")
                time.sleep(0.5)
            self.say(f"  ✔ {name:9} {status['identity']}  policies in place, ready")

    def show_certificates(self) -> None:
        """Where each pod's certificate came from: the sidecar's account, checked against the operator's record."""
        assert self.operator is not None
        records = {(p["namespace"], p["name"]): p.get("certificate") for p in self.operator.overview()["pods"]}
        for pod in self.config.pods:
            status = self.sidecars[pod.name].status() or {}
            held = ((status.get("mesh") or {}).get("certificate") or {})
            issued = records.get(pod.key) or {}
            agrees = held.get("serial") and held.get("serial") == issued.get("serial")
            until = datetime.datetime.fromtimestamp(issued.get("notAfter", 0), datetime.timezone.utc)
            self.say(f"  {'✔' if agrees else '✘'} {pod.name:9} serial {held.get('serial', '?')} signed by "
                     f"{issued.get('issuer', '?')} through {self.operator.url}, valid until {until:%Y-%m-%d %H:%M} UTC"
                     f"{'; the operator recorded the same serial' if agrees else '; the operator has no such record'}")

    # traffic
    def ping(self, src: str, dst: PodInfo, count: int = 3, deadline: int = 30) -> bool:
        result = run("ip", "netns", "exec", self.netns(src), "ping", "-c", str(count), "-w", str(deadline),
                     "-i", "0.3", dst.ips[0], check=False, timeout=deadline + 10)
        return result.returncode == 0

    def tcp(self, client: str, server: PodInfo, size: int = 256 * 1024) -> bool:
        payload = os.urandom(size)
        listener = in_netns(self.netns(server.name), listen, server.ips[0], 7000)
        received: dict = {}
        thread = threading.Thread(target=accept_all, args=(listener, received), daemon=True)
        thread.start()
        in_netns(self.netns(client), send, server.ips[0], 7000, payload)
        thread.join(60)
        return received.get("data") == payload

    def request(self, client: str, server: PodInfo, port: int, to: tuple[str, int], size: int = 256 * 1024) -> Call:
        """`client` sends a one-line request to `to`; `server`, listening on its pod IP and `port`,
        answers `size` bytes."""
        reply = os.urandom(size)
        listener = in_netns(self.netns(server.name), listen, server.ips[0], port)
        served: dict = {}
        thread = threading.Thread(target=answer_once, args=(listener, reply, served), daemon=True)
        thread.start()
        try:
            client_peer, answer = in_netns(self.netns(client), ask, *to, b"GET /\n")
        except OSError as exc:
            self.say(f"  ✘ {client} -> {to[0]}:{to[1]}: {exc}")
            client_peer, answer = None, b""
        thread.join(60)
        return Call(answer == reply, client_peer, served.get("local"), served.get("peer"))

    def service_translation(self, pod: str, key: str) -> dict | None:
        """What `pod`'s sidecar reports (its /status) about translating Service `key`; None if not asked to."""
        services = ((self.sidecars[pod].status() or {}).get("dataplane") or {}).get("services") or {}
        return (services.get("per_service") or {}).get(key)

    def start_capture(self, pod: str, name: str = "wire.pcap") -> Path:
        pcap = self.workdir / name
        self.capture = subprocess.Popen(
            ["ip", "netns", "exec", self.node, "tcpdump", "-i", self.veth(pod), "-n", "-U",
             "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        return pcap

    def stop_capture(self, pcap: Path) -> list[str]:
        if self.capture is not None:
            time.sleep(0.5)
            self.capture.send_signal(signal.SIGINT)
            self.capture.wait(10)
            self.capture = None
        return run("tcpdump", "-n", "-r", str(pcap), check=False).stdout.splitlines()

    # the story
    def run(self) -> int:
        cfg = self.config
        self.say("ipsec-mesh demo: per-pod IKEv2 and transport-mode ESP, on this machine\n")
        self.say(f"[1/9] pods on the pod network {cfg.network} (network namespaces on a bridge)")
        self.build_network()
        for pod in cfg.pods:
            self.say(f"  ✔ {pod.name:9} {pod.ips[0]:15} namespace {pod.namespace}")
        self.say(f"\n[2/9] the operator, standalone: pods and peerings from a YAML file instead of the Kubernetes API,"
                 f"\n      the same mesh CA and mesh API over HTTPS, on the node's address {cfg.node_address}")
        overview = self.start_operator()
        self.say(f"  ✔ mesh API at {self.operator.url}; mesh CA {overview['ca']['active']}")
        for peering in overview["peerings"]:
            self.say(f"  ✔ peering {peering['namespace']}/{peering['name']}: members {', '.join(peering['members'])};"
                     f" peers {', '.join(peering['peers'])}; {peering['enforcement']}")
        self.say("\n[3/9] a sidecar in every pod bootstraps from the mesh API: its own key, a CSR and the pod's"
                 "\n      token for a certificate, then the peer map; policies first, then IKE on UDP 500/4500")
        self.start_sidecars()
        self.say("\n[4/9] where each pod's certificate came from (the key never left the pod)")
        self.show_certificates()
        web, db = cfg.pod("web"), cfg.pod("db")
        self.say("\n[5/9] web talks to db: the first packet makes the kernel ask for an SA (ACQUIRE)")
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
        intruder = cfg.pod("intruder") if cfg.has_pod("intruder") else None
        self.say("\n[6/9] the intruder (valid mesh certificate, its own peering names web; shop never agreed)"
                 " tries web")
        ok_intruder = True
        if intruder is not None:
            answered = self.ping("intruder", web, count=2, deadline=6)
            refused = self.wait_refused("web")
            ok_intruder = not answered
            self.say(f"  {'✔' if not answered else '✘'} intruder -> web: no answer")
            self.say(f"  {'✔' if refused else '✘'} web refused {refused} IKE_SA_INIT from {intruder.ips[0]}:"
                     " not a peer")
        lines = self.stop_capture(pcap)
        wire = read_wire(lines, web.ips[0], db.ips[0])
        leaked = read_wire(lines, intruder.ips[0], web.ips[0]).plain if intruder else []
        leaked = [line for line in leaked if "ICMP" in line]
        self.say(f"  on the wire next to web: {len(wire.esp)} ESP packets and {len(wire.ike)} IKE packets between web"
                 f" and db, {len(wire.plain)} in plaintext; {len(leaked)} plaintext packets between intruder and web")
        for line in (wire.plain + leaked)[:5]:
            self.say(f"    plaintext: {line}")
        service = cfg.service_in_front_of(db)
        ok_service = service is None or self.call_service(web, db, service)
        self.say("\n[8/9] what an operator asks: `ipsec-mesh explain` (the operator's overview, and each sidecar's"
                 "\n      /status read inside its pod's namespace: it is not served on the pod network)")
        ok_explain = self.explain(web, db, expect_encrypted=True)
        if intruder is not None:
            ok_explain = self.explain(intruder, web, expect_encrypted=False) and ok_explain
        self.say("\n[9/9] a rekey, live: the CHILD_SA lifetime is short; pings keep flowing")
        ok_rekey = self.watch_rekey(db)
        ok = ok_ping and ok_tcp and ok_intruder and wire.clean and not leaked and ok_service and ok_explain \
            and ok_rekey
        self.say("\n" + ("✔ done: only ESP between the peered pods, also through the Service; the outsider refused;"
                          " a rekey seen"
                         if ok else "✘ something did not go as expected (see above)"))
        return 0 if ok else 1

    def call_service(self, web: PodInfo, db: PodInfo, service: DemoService) -> bool:
        """web calls db as applications do, through its Service's ClusterIP: web's sidecar translates it
        inside web's pod (nftables), so the call leaves web addressed to db's pod IP and is encrypted."""
        self.say(f"\n[7/9] web calls db through its Service, as applications do: {service.key} at"
                 f" {service.cluster_ip}:{service.port}\n      (web's sidecar translates the ClusterIP inside web's pod,"
                 " so the call leaves web addressed to db's pod IP and its policy applies)")
        pcap = self.start_capture("web", "service.pcap")
        call = self.request(web.name, db, service.target_port, (service.cluster_ip, service.port))
        wire = read_wire(self.stop_capture(pcap), web.ips[0], db.ips[0], cluster_ip=service.cluster_ip)
        translation = self.service_translation(web.name, service.key) or {}
        untranslated = ((self.sidecars[web.name].status() or {}).get("dataplane") or {}).get(
            "services", {}).get("untranslated_packets")
        translated = bool(translation.get("translated") and translation.get("current"))
        self.say(f"  {'✔' if translated else '✘'} web's sidecar translates {service.key} in web's pod"
                 f" (nftables table inet ipsec_mesh_svc; {untranslated} packets left untranslated)"
                 + (f": {translation.get('error') or 'not in its peer map'}" if not translated else ""))
        landed = call.server_local == (db.ips[0], service.target_port) and call.server_peer is not None \
            and call.server_peer[0] == web.ips[0]
        seen = call.client_peer == (service.cluster_ip, service.port)
        ok_call = call.intact and landed and seen
        at = f"{call.server_local[0]}:{call.server_local[1]}" if call.server_local else "nowhere"
        source = call.server_peer[0] if call.server_peer else "?"
        peer = f"{call.client_peer[0]}:{call.client_peer[1]}" if call.client_peer else "nothing"
        self.say(f"  {'✔' if ok_call else '✘'} web asked the Service {service.key} at {service.cluster_ip}:{service.port};"
                 f" db accepted at {at} from {source} and its 256 KiB answer"
                 f" {'arrived intact' if call.intact else 'did not arrive intact'}; web's socket was connected to {peer}")
        self.say(f"  on the wire next to web during the Service call: {len(wire.esp)} ESP packets between web and db,"
                 f" {len(wire.plain)} in plaintext, {len(wire.cluster_ip)} to or from the ClusterIP"
                 f" {service.cluster_ip}")
        for line in (wire.plain + wire.cluster_ip)[:5]:
            self.say(f"    plaintext: {line}")
        return translated and untranslated == 0 and ok_call and wire.clean and bool(wire.esp)

    def explain(self, a: PodInfo, b: PodInfo, expect_encrypted: bool) -> bool:
        """`ipsec-mesh explain A B --standalone STATE_DIR`, run where an operator would: on the node."""
        from ..cli.diagnose import explain
        from ..cli.render import verdict_text

        pair = ((a.namespace, a.name), (b.namespace, b.name))
        source = self.operator.source()
        verdict = in_netns(self.node, lambda: explain(source.facts(pair), *pair))
        self.say(f"  $ ipsec-mesh explain {a.namespace}/{a.name} {b.namespace}/{b.name} --standalone <state>")
        for line in verdict_text(verdict).splitlines():
            self.say(f"    {line}")
        return verdict.encrypted == expect_encrypted

    def wait_refused(self, pod: str, timeout: float = 30) -> int:
        """How many IKE_SA_INIT `pod` refused as not from a peer; waits (bounded) for the first, as
        under emulation the intruder's IKE may still be on its way."""
        deadline = time.monotonic() + timeout
        while True:
            counters = (self.sidecars[pod].status() or {}).get("counters", {})
            refused = counters.get("refused_unknown_peer", 0)
            if refused or time.monotonic() > deadline:
                return refused
            time.sleep(1)

    def watch_rekey(self, db: PodInfo, timeout: float = 150) -> bool:
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
        self.say("  ✘ no rekey within the time allowed; web's CHILD_SAs now:")
        status = self.sidecars["web"].status() or {"ike_sas": []}
        for child in (c for sa in status["ike_sas"] for c in sa["children"]):
            self.say(f"    {child['name']} {child['state']} in {child['inbound_spi']} out {child['outbound_spi']}")
        for line in [line for line in self.sidecars["web"].log().splitlines() if "rekey" in line.lower()][-8:]:
            self.say(f"    log: {line}")
        return False

    def cleanup(self) -> None:
        if self.capture is not None:
            self.capture.kill()
        for sidecar in self.sidecars.values():
            sidecar.stop()
        if self.operator is not None:
            self.operator.stop()
        for ns in reversed(self.namespaces):
            kill_netns_processes(ns)
            delete_netns(ns)
        left = [ns for ns in ip("netns", "list", check=False).split() if ns.startswith(self.prefix)]
        shutil.rmtree(self.workdir, ignore_errors=True)
        operator = " and the standalone operator" if self.operator is not None else ""
        self.say(f"\ncleaned up: {len(self.sidecars)} sidecars{operator} stopped,"
                 f" {len(self.namespaces)} namespaces removed"
                 + (f" ({len(left)} left: {left})" if left else ", nothing left behind"))


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
    except (StandaloneConfigError, OSError, yaml.YAMLError) as exc:
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
            return run_in_vm([sys.executable, "-m", "ipsec_mesh_operator.main", "demo", "--no-vm",
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
    except (DemoError, NetnsError, TimeoutError) as exc:
        demo.say(f"\n✘ {exc}")
        return 1
    finally:
        demo.cleanup()
        signal.signal(signal.SIGTERM, previous)
