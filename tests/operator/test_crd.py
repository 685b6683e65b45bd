"""The CRD: its defaults match the operator's, its schema accepts the docs' examples and refuses bad ones."""

import copy
from pathlib import Path

import pytest
import yaml

from ipsec_mesh.meshapi import MESH_DEFAULT_ESP, MESH_DEFAULT_IKE_PROPOSALS
from ipsec_mesh_operator.model import crd, peering
from ipsec_mesh_operator.model.peering import DEFAULTS, parse_peering

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "docs" / "examples").glob("*.yaml")
                  if any(doc.get("kind") == "IPsecPeering" for doc in yaml.safe_load_all(p.read_text())))


def spec_schema():
    return crd.openapi_schema()["properties"]["spec"]["properties"]


def test_crd_defaults_are_the_operator_defaults():
    spec = spec_schema()
    auth = spec["authentication"]["properties"]
    assert auth["type"]["default"] == "certificate"
    assert auth["certificateLifetime"]["default"] == DEFAULTS["certificateLifetime"]
    assert auth["pskRotationInterval"]["default"] == DEFAULTS["pskRotationInterval"]
    assert auth["pskOverlap"]["default"] == DEFAULTS["pskOverlap"]
    assert spec["lifetimes"]["properties"]["ike"]["default"] == DEFAULTS["ikeLifetime"]
    assert spec["lifetimes"]["properties"]["child"]["default"] == DEFAULTS["childLifetime"]
    assert spec["proposals"]["properties"]["ike"]["default"] == list(MESH_DEFAULT_IKE_PROPOSALS)
    assert spec["proposals"]["properties"]["esp"]["default"] == [MESH_DEFAULT_ESP]
    assert spec["enforcement"]["default"] == "require"
    assert spec["tfcPadding"]["default"] is False
    # Parsing a minimal spec with defaults applied by the schema equals parsing it bare.
    minimal = {"apiVersion": "ipsec-mesh.io/v1alpha1", "kind": "IPsecPeering", "metadata": {"name": "p"},
               "spec": {"selector": {}, "peers": [{"podSelector": {}}]}}
    defaulted = crd.apply_defaults(minimal)
    assert parse_peering("ns", "p", defaulted["spec"]) == parse_peering("ns", "p", minimal["spec"])


def test_the_fields_the_parser_knows_are_the_crds():
    spec = spec_schema()
    assert set(spec) == peering.SPEC_FIELDS
    assert set(spec["authentication"]["properties"]) == peering.AUTH_FIELDS
    assert set(spec["proposals"]["properties"]) == peering.PROPOSAL_FIELDS
    assert set(spec["lifetimes"]["properties"]) == peering.LIFETIME_FIELDS
    assert set(spec["peers"]["items"]["properties"]) == peering.PEER_FIELDS


def test_printer_columns_point_at_status_fields():
    version = crd.load_crd()["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"]
        if path.startswith(".status."):
            assert path.split(".")[2].split("[")[0] in status, path
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Members", "SAs", "Ready", "Age"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_doc_examples_validate_against_the_crd_and_the_operator(path):
    for obj in yaml.safe_load_all(path.read_text()):
        assert crd.validate(obj) == []
        meta = obj["metadata"]
        parse_peering(meta["namespace"], meta["name"], crd.apply_defaults(obj)["spec"])


def test_there_are_doc_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(enforcement="sometimes"),
    lambda s: s.update(tfcPadding="yes"),
    lambda s: s.update(unknownField=1),
    lambda s: s["peers"].clear(),
    lambda s: s["selector"].update(matchExpressions=[{"key": "a", "operator": "Near"}]),
    lambda s: s.update(lifetimes={"ike": "four hours"}),
    lambda s: s.update(authentication={"type": "kerberos"}),
    lambda s: s.pop("selector"),
])
def test_schema_refuses_bad_specs(mutate):
    obj = next(yaml.safe_load_all(EXAMPLES[0].read_text()))
    mutate(obj["spec"])
    assert crd.validate(copy.deepcopy(obj))
