"""The sidecar's local status listener (127.0.0.1:9741 inside the pod) is one constant
(meshapi.ports) that the sidecar's defaults and the operator's `explain` both use (issue 12)."""

import ast
import inspect

from ipsec_mesh.agent import cli as sidecar_cli
from ipsec_mesh.agent import config, mesh_settings
from ipsec_mesh.meshapi import ports
from ipsec_mesh_operator.cli import sources
from ipsec_mesh_operator.demo import processes
from tests.interop.harness import sidecar as interop_sidecar

MODULES = (sidecar_cli, config, mesh_settings, sources, processes, interop_sidecar)


def test_the_sidecar_listens_where_explain_looks():
    env = {"IPSEC_MESH_API_URL": "https://operator:8443", "IPSEC_MESH_TOKEN_FILE": "/t",
           "IPSEC_MESH_CA_BUNDLE": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"}
    mesh_default = mesh_settings.mesh_settings_from_env(env).status_listen
    file_default = config.AgentConfig.__dataclass_fields__["status_listen"].default
    assert mesh_default == file_default == (ports.STATUS_HOST, ports.STATUS_PORT)
    assert sidecar_cli.build_parser().parse_args(["status"]).url == f"http://{ports.STATUS_LISTEN}"
    assert ports.STATUS_LISTEN == f"{ports.STATUS_HOST}:{ports.STATUS_PORT}"


def code_constants(module) -> list:
    """Every literal in the module's code, docstrings left out (they may name the address)."""
    tree = ast.parse(inspect.getsource(module))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and id(node) not in docstrings]


def test_no_module_keeps_its_own_copy():
    for module in MODULES:
        copies = [value for value in code_constants(module)
                  if value == ports.STATUS_PORT or (isinstance(value, str) and str(ports.STATUS_PORT) in value)]
        assert copies == [], module.__name__
