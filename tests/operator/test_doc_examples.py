"""Every IPsecPeering in the docs' YAML blocks is valid for the CRD schema and the operator's parser."""

import re
from pathlib import Path

import pytest
import yaml

from ipsec_mesh_operator.model import crd
from ipsec_mesh_operator.model.peering import parse_peering

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCUMENTED = ["ipsecpeering.md", "cross-cluster.md", "key-rotation.md", "install.md", "cli.md"]
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


def peerings_in(name):
    found = []
    for index, block in enumerate(BLOCK.findall((DOCS / name).read_text())):
        for document in yaml.safe_load_all(block):
            if isinstance(document, dict) and document.get("kind") == "IPsecPeering":
                found.append(pytest.param(document, id=f"{name}#{index}-{document['metadata']['name']}"))
    return found


EXAMPLES = [example for name in DOCUMENTED for example in peerings_in(name)]


@pytest.mark.parametrize("peering", EXAMPLES)
def test_documented_peering_validates(peering):
    assert crd.validate(peering) == []
    meta = peering["metadata"]
    parse_peering(meta["namespace"], meta["name"], crd.apply_defaults(peering)["spec"])


def test_the_reference_and_cross_cluster_docs_have_examples():
    assert len(peerings_in("ipsecpeering.md")) >= 2
    assert len(peerings_in("cross-cluster.md")) >= 4


def test_the_defaulted_example_is_what_the_crd_defaults_to():
    minimal, defaulted = (p.values[0] for p in peerings_in("ipsecpeering.md")[:2])
    assert crd.apply_defaults(minimal) == defaulted


def test_the_reference_lists_every_spec_field_of_the_crd():
    text = (DOCS / "ipsecpeering.md").read_text()
    spec = crd.openapi_schema()["properties"]["spec"]["properties"]

    def leaves(schema, prefix):
        for name, sub in (schema.get("properties") or {}).items():
            inner = sub.get("items", sub) if sub.get("type") == "array" else sub
            if inner.get("properties") and name != "selector" and not name.endswith("Selector"):
                yield from leaves(inner, f"{prefix}{name}.")
            else:
                yield prefix + name

    def documented(path):
        shown = path.replace("peers.", "peers[].")
        parent, _, leaf = shown.rpartition(".")
        return f"`{shown}`" in text or (f"`{parent}`" in text and f"`{leaf}`" in text)

    missing = [path for path in leaves({"properties": spec}, "") if not documented(path)]
    assert missing == []
    status = crd.openapi_schema()["properties"]["status"]["properties"]
    assert [name for name in status if f"`{name}`" not in text and f"`{name}[]`" not in text] == []


def test_install_guide_lists_every_chart_value_with_its_default():
    values = yaml.safe_load((DOCS.parent / "charts" / "ipsec-mesh" / "values.yaml").read_text())
    rows = {}
    for line in (DOCS / "install.md").read_text().splitlines():
        match = re.match(r"^\| `([A-Za-z.]+)` \| (.*?) \|", line)
        if match:
            rows[match.group(1)] = match.group(2)

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and value and key != "resources":
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value

    problems = []
    for path, default in leaves(values):
        if path not in rows:
            problems.append(f"{path}: not documented")
        elif isinstance(default, (bool, int, str)) and not isinstance(default, dict):
            shown = {True: "true", False: "false"}.get(default, default) if isinstance(default, bool) else default
            if f"`{shown}`" not in rows[path] and not (default == "" and '`""`' in rows[path]):
                problems.append(f"{path}: default {default!r} not shown as `{shown}`")
    assert problems == []
