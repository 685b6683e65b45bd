"""Names of a pod's identity: the ID_FQDN used in IKE and the certificate SANs.

A pod is ``<pod>.<namespace>.pod.<trust-domain>`` (certificate dNSName and IKE
ID_FQDN); its ServiceAccount is ``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``
(certificate URI SAN). See docs/identity.md.
"""

from __future__ import annotations

import re

from .errors import PeerMapError

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")


def check_label(value: str, what: str) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise PeerMapError(what, f"{value!r} is not a DNS label")
    return value


def check_dns_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DNS_NAME.match(value):
        raise PeerMapError(what, f"{value!r} is not a DNS name")
    return value


def pod_fqdn(pod: str, namespace: str, trust_domain: str, pod_uid: str | None = None) -> str:
    """The pod's IKE identity (ID_FQDN) and certificate dNSName.

    Pod names are DNS subdomains (dots allowed; the label before ``pod`` is always
    the namespace). When the name would exceed 253 octets, the pod's UID stands in
    for its name, as docs/identity.md says.
    """
    check_dns_name(pod, "pod")
    check_label(namespace, "namespace")
    check_dns_name(trust_domain, "trustDomain")
    name = f"{pod}.{namespace}.pod.{trust_domain}"
    if len(name) > 253 and pod_uid:
        name = f"{check_label(pod_uid.lower(), 'pod uid')}.{namespace}.pod.{trust_domain}"
    return check_dns_name(name, "identity")


def service_account_uri(namespace: str, service_account: str, trust_domain: str) -> str:
    """The pod's ServiceAccount as a SPIFFE ID (certificate URI SAN)."""
    check_label(namespace, "namespace")
    check_dns_name(service_account, "serviceAccount")
    check_dns_name(trust_domain, "trustDomain")
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def check_identity_pattern(value: object, path: str) -> str:
    """An allowed peer identity: a DNS name, or ``*.`` and a domain."""
    if not isinstance(value, str):
        raise PeerMapError(path, "must be a string")
    check_dns_name(value[2:] if value.startswith("*.") else value, path)
    return value
