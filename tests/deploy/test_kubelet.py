"""The tier's small kubelet resolves a container as the kubelet and containerd do (no processes started)."""

from __future__ import annotations

import pytest

from tests.deploy.kubelet import KubeletError, command_line, image_config, resolve_env, security

POD = {"metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
       "spec": {"serviceAccountName": "web", "securityContext": {"runAsUser": 1000, "fsGroup": 2000,
                                                                "sysctls": [{"name": "net.x", "value": "1"}]}},
       "status": {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}}


def container(**extra):
    return {"name": "c", "resources": {"limits": {"memory": "128Mi", "cpu": "1500m"}}, **extra}


def test_env_sources_resolve_in_order_with_expansion():
    image = image_config("operator")
    env = resolve_env(POD, container(env=[
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "GREETING", "value": "$(NAME) in $(MISSING) costs $$5"},
    ]), image, secrets={("s", "k"): "v"})
    assert env["NAME"] == "web-0" and env["IPS"] == "10.0.0.5,fd00::5" and env["APP"] == "web"
    assert env["MEM"] == "128" and env["CPU"] == "2" and env["KEY"] == "v"  # cpu rounded up
    assert env["GREETING"] == "web-0 in $(MISSING) costs $5"
    assert env["PATH"].startswith("/opt/ipsec-mesh/bin:") and env["IPSEC_MESH_CRD"].startswith("/opt/ipsec-mesh/")
    assert env["HOSTNAME"] == "web-0" and env["HOME"] == "/"


def test_what_the_kubelet_refuses_is_refused():
    image = image_config("sidecar")
    with pytest.raises(KubeletError, match="no key"):
        resolve_env(POD, container(env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
                    image, secrets={})
    assert "K" not in resolve_env(POD, container(env=[{"name": "K", "valueFrom": {"secretKeyRef": {
        "name": "s", "key": "k", "optional": True}}}]), image)
    with pytest.raises(KubeletError, match="runAsNonRoot"):
        security(POD, container(securityContext={"runAsUser": 0, "runAsNonRoot": True}), image)
    with pytest.raises(KubeletError, match="fieldRef"):
        resolve_env(POD, container(env=[{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]),
                    image)


def test_command_args_and_security_follow_the_runtime_rules():
    image = image_config("sidecar")
    assert command_line(container(), image, {}) == ["ipsec-mesh-sidecar", "mesh"]  # image CMD
    assert command_line(container(args=["status"]), image, {}) == ["status"]  # args replace CMD (no ENTRYPOINT)
    assert command_line(container(command=["x", "$(A)"]), image, {"A": "1"}) == ["x", "1"]
    sec = security(POD, container(securityContext={"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
                                                   "allowPrivilegeEscalation": False}), image)
    assert (sec.uid, sec.gid, sec.groups, sec.caps, sec.no_new_privs) == (1000, 0, [2000], ["NET_ADMIN"], True)
    assert sec.sysctls == {"net.x": "1"}
    default = security(POD, container(securityContext={"capabilities": {"drop": ["NET_RAW"]}}), image)
    assert "NET_RAW" not in default.caps and "CHOWN" in default.caps
