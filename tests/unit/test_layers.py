"""Import rules of the IKE core and of the operator's sub-packages (CONTRIBUTING.md), read
from the source (ast), so a violation fails here whether or not the import is ever executed
(imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

IKE = Path(__file__).resolve().parents[2] / "sidecar" / "ipsec_mesh" / "ike"
UPPER_LAYERS = ("ipsec_mesh.xfrm", "ipsec_mesh.agent", "ipsec_mesh.meshapi", "ipsec_mesh_operator")
# Only these modules of the core may use the exchanges package (they sit above it).
EXCHANGE_USERS = {"ipsec_mesh.ike", "ipsec_mesh.ike.endpoint"}


def module_name(path: Path, root: Path) -> str:
    parts = ["ipsec_mesh", "ike", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path, name: str | None = None) -> set[str]:
    """Every module `path` imports, absolute, including `from X import name` as X.name."""
    name = name or module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def violations(root: Path = IKE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        for target in sorted(imports(path, root)):
            if target.startswith(UPPER_LAYERS):
                out.append(f"{name} imports {target} (a layer above the IKE core)")
            in_exchanges = target.startswith("ipsec_mesh.ike.exchanges.")
            if name.startswith("ipsec_mesh.ike.exchanges.") and in_exchanges \
                    and target.split(".")[3] != name.split(".")[3]:
                out.append(f"{name} imports {target} (exchanges do not import each other)")
            if not name.startswith("ipsec_mesh.ike.exchanges") and name not in EXCHANGE_USERS \
                    and (in_exchanges or target == "ipsec_mesh.ike.exchanges"):
                out.append(f"{name} imports {target} (only the endpoint sits above the exchanges)")
    return out


def test_ike_core_imports_only_downward_and_exchanges_stay_apart():
    assert violations() == []


def test_the_rule_sees_imports_inside_functions(tmp_path):
    (tmp_path / "exchanges").mkdir()
    (tmp_path / "exchanges" / "a.py").write_text("def f():\n    from .b import g\n")
    (tmp_path / "exchanges" / "b.py").write_text("from ..sa import IkeSa\n")
    (tmp_path / "sa.py").write_text("def h():\n    from .exchanges import a\n    import ipsec_mesh.agent\n")
    assert violations(tmp_path) == [
        "ipsec_mesh.ike.exchanges.a imports ipsec_mesh.ike.exchanges.b (exchanges do not import each other)",
        "ipsec_mesh.ike.exchanges.a imports ipsec_mesh.ike.exchanges.b.g (exchanges do not import each other)",
        "ipsec_mesh.ike.sa imports ipsec_mesh.agent (a layer above the IKE core)",
        "ipsec_mesh.ike.sa imports ipsec_mesh.ike.exchanges (only the endpoint sits above the exchanges)",
        "ipsec_mesh.ike.sa imports ipsec_mesh.ike.exchanges.a (only the endpoint sits above the exchanges)",
    ]


OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "ipsec_mesh_operator"
# What each part of the operator may import of the operator (itself included). Parts not
# listed (the entry points main and handlers, standalone/, demo/) sit on top and may import all.
OPERATOR_LEAVES = {"metrics", "netns"}
OPERATOR_ALLOWED = {
    "model": {"model"},
    "pki": {"model", "pki"},
    "controller": {"model", "pki", "controller", *OPERATOR_LEAVES},
    "server": {"model", "pki", "controller", "server", *OPERATOR_LEAVES},
    "cli": {"model", "cli", *OPERATOR_LEAVES},
    **{leaf: set() for leaf in OPERATOR_LEAVES},
}


def operator_part(module: str) -> str | None:
    """The sub-package (or leaf module at the root) a module of the operator belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "ipsec_mesh_operator" and len(parts) > 1 else None


def operator_violations(root: Path = OPERATOR) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        name = ".".join(["ipsec_mesh_operator", *(rel[:-1] if rel[-1] == "__init__" else rel)])
        part = operator_part(name)
        if part not in OPERATOR_ALLOWED:
            continue
        for target in sorted(imports(path, root, name)):
            used = operator_part(target)
            # `from .. import x` names the package itself first, then x: judge x
            if target == "ipsec_mesh_operator" or used is None or used in OPERATOR_ALLOWED[part]:
                continue
            out.append(f"{name} imports {target} ({part} may import {sorted(OPERATOR_ALLOWED[part]) or 'nothing'})")
    return out


def test_operator_parts_import_only_what_their_rule_allows():
    assert operator_violations() == []


def test_the_operator_rule_sees_upward_imports(tmp_path):
    for package in ("model", "cli", "server"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "model" / "peering.py").write_text("def f():\n    from ..controller.index import PodInfo\n")
    (tmp_path / "cli" / "facts.py").write_text("from ..server import admission\nfrom ..model.peering import f\n")
    (tmp_path / "server" / "api.py").write_text("from .. import metrics, handlers\n")
    assert operator_violations(tmp_path) == [
        "ipsec_mesh_operator.cli.facts imports ipsec_mesh_operator.server (cli may import ['cli', 'metrics', 'model', 'netns'])",
        "ipsec_mesh_operator.cli.facts imports ipsec_mesh_operator.server.admission"
        " (cli may import ['cli', 'metrics', 'model', 'netns'])",
        "ipsec_mesh_operator.model.peering imports ipsec_mesh_operator.controller.index (model may import ['model'])",
        "ipsec_mesh_operator.model.peering imports ipsec_mesh_operator.controller.index.PodInfo"
        " (model may import ['model'])",
        "ipsec_mesh_operator.server.api imports ipsec_mesh_operator.handlers"
        " (server may import ['controller', 'metrics', 'model', 'netns', 'pki', 'server'])",
    ]


#: Modules of the sidecar below every layer: they import nothing of ours, so any layer may use them.
SIDECAR_LEAVES = ("records", "keybounds")
#: What the operator may import of the sidecar: the shared model, and the leaf that says which keys both accept.
OPERATOR_MAY_IMPORT = ([], ["meshapi"], ["keybounds"])


def test_operator_imports_only_the_shared_model_of_the_sidecar():
    """The operator never imports the agent, `xfrm` or `ike` (CONTRIBUTING.md): what both sides must
    agree on lives in `ipsec_mesh.meshapi` (ports, the peer map) or a leaf (`keybounds`: RSA keys the IKE
    core and the operator both accept, which the core, below `meshapi`, could not import from there)."""
    out = []
    for path in sorted(OPERATOR.rglob("*.py")):
        rel = path.relative_to(OPERATOR).with_suffix("").parts
        name = ".".join(["ipsec_mesh_operator", *(rel[:-1] if rel[-1] == "__init__" else rel)])
        out.extend(f"{name} imports {target}" for target in sorted(imports(path, OPERATOR, name))
                   if target.split(".")[0] == "ipsec_mesh" and target.split(".")[1:2] not in OPERATOR_MAY_IMPORT)
    assert out == []


def test_the_sidecar_leaves_import_nothing_of_ours():
    found = []
    for leaf in SIDECAR_LEAVES:
        path = IKE.parent / f"{leaf}.py"
        found += [f"ipsec_mesh.{leaf} imports {target}" for target in sorted(imports(path, IKE.parent, f"ipsec_mesh.{leaf}"))
                  if target.split(".")[0] in ("ipsec_mesh", "ipsec_mesh_operator")]
    assert found == []


AIO = IKE.parent / "aio"


def test_the_event_loop_imports_nothing_of_ours():
    """aio sits below every layer of the sidecar (CONTRIBUTING.md): all of them may import it."""
    found = []
    for path in sorted(AIO.rglob("*.py")):
        name = "ipsec_mesh.aio" if path.stem == "__init__" else f"ipsec_mesh.aio.{path.stem}"
        found += [f"{name} imports {target}" for target in sorted(imports(path, AIO, name))
                  if target.startswith("ipsec_mesh.") and not target.startswith("ipsec_mesh.aio")]
    assert found == []
