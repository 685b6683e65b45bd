"""The sidecar's pod-facing health port is one constant (meshapi.ports) that the injected
container's probes, its port list and the sidecar's own default all use (issue 12)."""

import inspect

from ipsec_mesh.agent import mesh_settings
from ipsec_mesh.meshapi import ports
from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.server import admission


def test_injected_probes_and_the_sidecar_default_use_the_one_health_port():
    container = admission.sidecar_container(OperatorConfig(), "")
    probed = {container["startupProbe"]["httpGet"]["port"], container["livenessProbe"]["httpGet"]["port"]}
    declared = {p["containerPort"] for p in container["ports"] if p["name"] == "mesh-health"}
    pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    env = {"IPSEC_MESH_API_URL": "https://operator:8443", "IPSEC_MESH_TOKEN_FILE": "/t", "IPSEC_MESH_CA_BUNDLE": pem}
    default = mesh_settings.mesh_settings_from_env(env).health_port
    assert probed == declared == {default} == {ports.HEALTH_PORT}


def test_neither_side_keeps_its_own_copy():
    for module in (admission, mesh_settings):
        code = [line for line in inspect.getsource(module).splitlines() if not line.lstrip().startswith(("#", "IPSEC"))]
        assert not any(str(ports.HEALTH_PORT) in line for line in code), module.__name__
