"""Import rules of the IKE core, read from the source (ast), so a violation fails here
whether or not the import is ever executed (imports inside functions count too)."""

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


def imports(path: Path, root: Path) -> set[str]:
    """Every module `path` imports, absolute, including `from X import name` as X.name."""
    name = module_name(path, root)
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
