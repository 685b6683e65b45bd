"""Where `ipsec-mesh explain` and `peerings` get their facts: the API server, or a standalone operator.

- `ClusterSource`: the `kubernetes` client with the kubeconfig (or in-cluster
  credentials): IPsecPeerings with their status, pods, namespaces, and each
  sidecar's status: `ipsec-mesh-sidecar status --json` run in its container through
  the API server (pods/exec), which reads the sidecar's local listener
  (127.0.0.1:9741). The pod-facing health port 15021 serves no /status: identities,
  peers, SPIs and certificates are not for the pod network (issue 10), and exec is
  authorised by the API server per user and pod.
- `StandaloneSource`: the standalone operator's GET /v1/admin/overview over HTTPS
  (URL, admin token and CA bundle from its state directory), and each sidecar's
  status from its local listener 127.0.0.1:9741, read inside the pod's network
  namespace on this node (the overview names it, from the YAML's `netns`): the
  standalone analogue of exec, for root on the pod's node. Never over the pod network.

Both stay thin: they fetch documents and hand them to facts.py; diagnose.py decides.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import urllib3

from ipsec_mesh.meshapi.ports import STATUS_HOST, STATUS_LISTEN, STATUS_PORT

from ..model.peering import GROUP, PLURAL, VERSION
from ..model.services import SERVICE_NAME_LABEL
from ..model.sidecar import SIDECAR_NAME
from ..netns import NetnsUnavailable, check_netns_name, in_netns
from .facts import Facts, PeeringFacts, PodFacts, PodKey, RemoteFacts, ServiceFacts

STATUS_TIMEOUT = 5.0
STATUS_COMMAND = ["ipsec-mesh-sidecar", "status", "--json"]
MAX_STATUS_BYTES = 4 * 1024 * 1024
OVERVIEW_PATH = "/v1/admin/overview"
LOCAL_STATUS_TIMEOUT = 10.0  # under the VM's software emulation a busy sidecar takes seconds to answer
NO_NETNS = (f"no network namespace known for the pod (its sidecar serves /status only on {STATUS_LISTEN} "
            "inside the pod): name the pod's network namespace (`netns:`) in the standalone YAML and run explain "
            "as root on the pod's node")


class SourceError(Exception):
    """The facts cannot be collected at all (no cluster, no operator); the message says why."""


def _status_document(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    if len(raw) > MAX_STATUS_BYTES:
        return None, "status document too large"
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    return (doc, "") if isinstance(doc, dict) else (None, "status is not a JSON object")


def endpoint_pods(service: ServiceFacts | None, pods: Iterable[tuple[PodKey, Iterable[str]]]) -> set[PodKey]:
    """The pods (of `pods`: key and IPs) at the Service's endpoint addresses."""
    if service is None or service.entry is None:
        return set()
    addresses = {str(e.address) for port in service.entry.ports for e in port.endpoints}
    return {key for key, ips in pods if addresses & set(ips)}


class ClusterSource:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None, api_client: Any = None):
        import kubernetes

        if api_client is None:
            try:
                api_client = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
            except (kubernetes.config.ConfigException, OSError) as exc:
                try:
                    kubernetes.config.load_incluster_config()
                    api_client = kubernetes.client.ApiClient()
                except kubernetes.config.ConfigException:
                    raise SourceError(f"no kubeconfig and not in a cluster: {exc}") from None
        self.kubernetes = kubernetes
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.api_client = api_client

    def _call(self, function, *args, **kwargs) -> Any:
        try:
            return function(*args, **kwargs)
        except self.kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise SourceError(f"the API server answered {exc.status} {exc.reason}") from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise SourceError(f"cannot reach the API server: {exc}") from None

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.api_client.sanitize_for_serialization(obj)

    def peerings(self, namespace: str | None = None) -> list[PeeringFacts]:
        if namespace is None:
            answer = self._call(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            answer = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        return [PeeringFacts.from_object(item) for item in (answer or {}).get("items") or []]

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace is None:
            answer = self._call(self.core.list_pod_for_all_namespaces)
        else:
            answer = self._call(self.core.list_namespaced_pod, namespace)
        return [self._plain(pod) for pod in (answer.items if answer is not None else [])]

    def pod(self, key: PodKey) -> dict[str, Any] | None:
        answer = self._call(self.core.read_namespaced_pod, key[1], key[0])
        return None if answer is None else self._plain(answer)

    def namespace_labels(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        labels = {}
        for name in sorted(set(names)):
            answer = self._call(self.core.read_namespace, name)
            if answer is not None:
                labels[name] = dict(answer.metadata.labels or {})
        return labels

    def exec_in_sidecar(self, namespace: str, name: str, command: list[str]) -> tuple[bytes, str]:
        """Run `command` in the pod's sidecar container through the API server: (stdout, error)."""
        from kubernetes.stream import stream

        client = stream(self.core.connect_get_namespaced_pod_exec, name, namespace, container=SIDECAR_NAME,
                        command=command, stdin=False, stdout=True, stderr=True, tty=False,
                        _preload_content=False, _request_timeout=STATUS_TIMEOUT)
        try:
            client.run_forever(timeout=STATUS_TIMEOUT)
            out, err = client.read_stdout() or "", client.read_stderr() or ""
            if client.returncode not in (0, None):
                return b"", f"exit {client.returncode}: {err.strip()[:200]}"
            return out.encode(), ""
        finally:
            client.close()

    def sidecar_status(self, pod: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        meta = pod.get("metadata") or {}
        try:
            out, error = self.exec_in_sidecar(meta.get("namespace"), meta.get("name"), STATUS_COMMAND)
        except self.kubernetes.client.ApiException as exc:
            return None, f"exec in the sidecar answered {exc.status} {exc.reason}"
        except Exception as exc:  # the websocket client raises its own types
            return None, f"exec in the sidecar: {exc}"
        return (None, f"ipsec-mesh-sidecar status: {error}") if error else _status_document(out)

    def service_facts(self, client: PodKey, key: PodKey) -> Facts:
        """`client` and the pods behind Service `key` with their sidecars' status, and the Service."""
        service = self._call(self.core.read_namespaced_service, key[1], key[0])
        services = {}
        if service is not None:
            discovery = self.kubernetes.client.DiscoveryV1Api(self.api_client)
            slices = self._call(discovery.list_namespaced_endpoint_slice, key[0],
                                label_selector=f"{SERVICE_NAME_LABEL}={key[1]}")
            services[key] = ServiceFacts.from_objects(
                self._plain(service), [self._plain(s) for s in (slices.items if slices is not None else [])])
        behind = endpoint_pods(services.get(key), (((p["metadata"]["namespace"], p["metadata"]["name"]),
                                                     PodFacts.from_pod(p).ips) for p in self.pods(key[0])))
        return dataclasses.replace(self.facts([client, *sorted(behind)]), services=services)

    def facts(self, pods: Iterable[PodKey], namespace: str | None = None, *, all_pods: bool = False,
              statuses: bool = False) -> Facts:
        """The given pods with their sidecars' status; with `all_pods` also every other pod (with
        `statuses`, the status of those in `namespace` too); the peerings of `namespace` (all if None)."""
        bodies: dict[PodKey, dict[str, Any] | None] = {key: self.pod(key) for key in pods}
        found = {}
        for key, body in bodies.items():
            if body is None:
                continue
            facts = PodFacts.from_pod(body)
            if facts.has_sidecar:  # only a sidecar has a status endpoint to ask
                facts = PodFacts.from_pod(body, *self.sidecar_status(body))
            found[key] = facts
        if all_pods:  # every namespace: peers of a namespace's peerings may live anywhere
            for body in self.pods():
                facts = PodFacts.from_pod(body)
                if facts.key in found:
                    continue
                if statuses and facts.has_sidecar and namespace in (None, facts.namespace):
                    facts = PodFacts.from_pod(body, *self.sidecar_status(body))
                found[facts.key] = facts
        namespaces = {key[0] for key in found} | {key[0] for key in bodies}
        return Facts(found, tuple(self.peerings(namespace)), self.namespace_labels(namespaces),
                     collected_at=time.time())


class StandaloneSource:
    """The standalone operator's admin overview plus the sidecars' status endpoints."""

    def __init__(self, state_dir: str | Path, url: str | None = None):
        state = Path(state_dir)
        try:
            self.url = (url or (state / "api-url").read_text().strip()).rstrip("/")
            self.token = (state / "admin-token").read_text().strip()
        except OSError as exc:
            raise SourceError(f"{state} is not a running standalone operator's state directory: {exc}") from None
        bundle = state / "ca-bundle.pem"
        self.context = ssl.create_default_context(cafile=str(bundle)) if bundle.exists() else None
        if self.context is None:
            raise SourceError(f"{bundle} is missing: cannot verify the operator's certificate")

    def overview(self) -> dict[str, Any]:
        request = urllib.request.Request(self.url + OVERVIEW_PATH, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=STATUS_TIMEOUT, context=self.context) as response:
                doc = json.loads(response.read(MAX_STATUS_BYTES))
        except urllib.error.HTTPError as exc:
            raise SourceError(f"{self.url}{OVERVIEW_PATH} answered {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SourceError(f"cannot read {self.url}{OVERVIEW_PATH}: {exc}") from None
        if not isinstance(doc, dict):
            raise SourceError("the overview is not a JSON object")
        return doc

    @staticmethod
    def sidecar_status(netns: Any) -> tuple[dict[str, Any] | None, str]:
        """The sidecar's /status inside `netns` (as the overview names it; None: not known)."""
        if netns is None:
            return None, NO_NETNS
        try:
            return read_local_status(check_netns_name(netns))
        except ValueError as exc:
            return None, f"the overview's netns: {exc}"

    def facts(self, pods: Iterable[PodKey], namespace: str | None = None, *, all_pods: bool = False,
              statuses: bool = False) -> Facts:
        return facts_from_overview(self.overview(), set(pods), namespace, all_pods, self.sidecar_status, statuses)

    def service_facts(self, client: PodKey, key: PodKey) -> Facts:
        return service_facts_from_overview(self.overview(), client, key, self.sidecar_status)


def service_facts_from_overview(doc: Mapping[str, Any], client: PodKey, key: PodKey, read_status) -> Facts:
    """Facts for `explain POD svc/NS/NAME` from the standalone operator's overview (its `services` objects)."""
    objects = [entry for entry in doc.get("services") or [] if isinstance(entry, Mapping)]
    bodies = [entry.get("object") for entry in objects if isinstance(entry.get("object"), Mapping)]

    def named(body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        return meta.get("namespace", "default") == key[0] and (
            meta.get("name") == key[1] if body.get("kind") == "Service"
            else (meta.get("labels") or {}).get(SERVICE_NAME_LABEL) == key[1])

    mine = [body for body in bodies if named(body)]
    service = next((body for body in mine if body.get("kind") == "Service"), None)
    services = {} if service is None else {key: ServiceFacts.from_objects(
        service, [body for body in mine if body.get("kind") == "EndpointSlice"])}
    behind = endpoint_pods(services.get(key), (
        ((str(p.get("namespace", "")), str(p.get("name", ""))), [str(ip) for ip in p.get("ips") or []])
        for p in doc.get("pods") or []))
    facts = facts_from_overview(doc, {client, *behind}, None, False, read_status)
    return dataclasses.replace(facts, services=services)


def _get_local_status() -> bytes:
    connection = http.client.HTTPConnection(STATUS_HOST, STATUS_PORT, timeout=LOCAL_STATUS_TIMEOUT)
    try:
        connection.request("GET", "/status")
        response = connection.getresponse()
        if response.status != 200:
            raise http.client.HTTPException(f"answered {response.status} {response.reason}")
        return response.read(MAX_STATUS_BYTES + 1)
    finally:
        connection.close()


def read_local_status(netns: str) -> tuple[dict[str, Any] | None, str]:
    """/status from the sidecar's local listener, read inside the pod's network namespace `netns`
    (root on the pod's node): (document, "") or (None, why not)."""
    try:
        raw = in_netns(netns, _get_local_status, timeout=2 * LOCAL_STATUS_TIMEOUT)
    except NetnsUnavailable as exc:
        return None, f"{exc.strerror} (run explain as root on the pod's node)"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"http://{STATUS_LISTEN}/status in network namespace {netns}: {exc}"
    return _status_document(raw)


def facts_from_overview(doc: Mapping[str, Any], wanted: set[PodKey], namespace: str | None, all_pods: bool,
                        read_status, statuses: bool = False) -> Facts:
    """Facts from the standalone operator's overview; the sidecars of `wanted` pods are asked for
    their status (with `statuses`, those of every pod in `namespace` too)."""
    pods = {}
    versions = {}
    for entry in doc.get("pods") or []:
        key = (str(entry.get("namespace", "")), str(entry.get("name", "")))
        if key not in wanted and not all_pods:
            continue
        ips = tuple(str(ip) for ip in entry.get("ips") or [])
        asked = key in wanted or (statuses and namespace in (None, key[0]))
        status, error = read_status(entry.get("netns")) if asked else (None, "not asked")
        # Every pod the standalone operator knows runs a sidecar: it is listed because it has one.
        pods[key] = PodFacts(key[0], key[1], ips=ips, injected=True, has_sidecar=True, status=status,
                             status_error=error)
        if isinstance(entry.get("peerMapVersion"), int):
            versions[key] = entry["peerMapVersion"]
    peerings = []
    for entry in doc.get("peerings") or []:
        if namespace is not None and entry.get("namespace") != namespace:
            continue
        health = entry.get("health") or {}
        peerings.append(PeeringFacts(
            str(entry.get("namespace", "")), str(entry.get("name", "")), {},
            {"members": len(entry.get("members") or []), "peers": len(entry.get("peers") or []),
             "establishedSAs": int(health.get("established_sas") or 0),
             "sidecarErrors": list(health.get("errors") or []),
             "federation": [f for f in entry.get("federation") or [] if isinstance(f, Mapping)]},
            members=tuple(entry.get("members") or ()), peers=tuple(entry.get("peers") or ()),
            auth=entry.get("auth"), enforcement=entry.get("enforcement"),
            remotes=tuple(RemoteFacts.from_dict(r) for r in entry.get("remotes") or [] if isinstance(r, Mapping))))
    return Facts(pods, tuple(peerings), map_versions=versions, collected_at=time.time())
