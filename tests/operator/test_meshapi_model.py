"""The shared peer-map model: round trips, strict validation, YAML input."""

import base64
import copy
import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh.ike.constants import EncrId, EsnId, KeId, PrfId
from ipsec_mesh.meshapi import (
    AuthKind,
    Enforcement,
    LocalIdentity,
    Peer,
    PeeringPolicy,
    PeerMap,
    PeerMapError,
    ProposalError,
    PskKey,
    load_peer_map_file,
    parse_esp,
    parse_ike,
    pod_fqdn,
    service_account_uri,
)


def sample_map() -> PeerMap:
    return PeerMap(
        version=7,
        local=LocalIdentity("a.prod.pod.cluster.local", "a", "prod", "web", (ipaddress.ip_address("10.0.0.1"),)),
        policies=(
            PeeringPolicy(
                name="prod/web-db",
                peers=(Peer("db-0", (ipaddress.ip_network("10.0.0.9/32"),), ("db-0.prod.pod.cluster.local",)),),
            ),
            PeeringPolicy(
                name="prod/remote",
                auth=AuthKind.PSK,
                psk_keys=(PskKey("k2", b"\x01" * 32, True, None), PskKey("k1", b"\x02" * 32, False, 1_700_000_000)),
                enforcement=Enforcement.PREFER,
                tfc_padding=True,
                peers=(Peer("east", (ipaddress.ip_network("10.8.0.0/16"), ipaddress.ip_network("fd00::/64")),
                            ("*.east.example",)),),
            ),
        ),
    )


def test_json_round_trip_is_lossless():
    peer_map = sample_map()
    assert PeerMap.from_json(peer_map.to_json()) == peer_map


def test_psk_value_never_shows_in_repr():
    key = PskKey("k1", b"secret-secret-secret-secret-1234")
    assert "secret" not in repr(key)


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d.update(extra=1), ""),
    (lambda d: d["peerings"][0].update(enforcment="prefer"), "peerings[0]"),
    (lambda d: d["peerings"][0]["peers"][0].update(addresses=["10.0.0.9/8"]), "peerings[0].peers[0].addresses[0]"),
    (lambda d: d["peerings"][0]["peers"][0].update(addresses=[]), "peerings[0].peers[0].addresses"),
    (lambda d: d["peerings"][0].update(enforcement="sometimes"), "peerings[0].enforcement"),
    (lambda d: d["peerings"][0]["proposals"].update(ike=["aes256cbc-sha1-modp1024"]), "peerings[0].proposals.ike[0]"),
    (lambda d: d["peerings"][1]["psk"][0].update(value="***"), "peerings[1].psk[0].value"),
    (lambda d: d["peerings"][1]["psk"][0].update(value=base64.b64encode(b"short").decode()), "peerings[1].psk[0]"),
    (lambda d: d["peerings"][1].update(psk=[]), "peerings[1]"),
    (lambda d: d["peerings"][1]["psk"][0].update(valueFile="/etc/shadow", value=None) or
               d["peerings"][1]["psk"][0].pop("value"), "peerings[1].psk[0].valueFile"),
    (lambda d: d["local"].update(identity="Not A Name"), "local.identity"),
    (lambda d: d.update(version=True), "version"),
    (lambda d: d["peerings"].append(copy.deepcopy(d["peerings"][0])), "peerings"),
])
def test_invalid_documents_raise_typed_errors_with_the_path(mutate, path):
    document = sample_map().to_dict()
    mutate(document)
    with pytest.raises(PeerMapError) as error:
        PeerMap.from_dict(document)
    assert error.value.path == path


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
))
def test_garbage_only_ever_raises_peer_map_error(document):
    try:
        PeerMap.from_dict(document)
    except PeerMapError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_bytes_raise_peer_map_error(data):
    with pytest.raises(PeerMapError):
        PeerMap.from_json(data)


def test_mutated_valid_document_fields_are_checked():
    document = sample_map().to_dict()
    for key in ("local", "peerings", "trustBundle"):
        broken = copy.deepcopy(document)
        broken[key] = 42
        with pytest.raises(PeerMapError):
            PeerMap.from_dict(broken)


def test_yaml_file_feeds_the_same_structure(tmp_path):
    key = b"k" * 32
    (tmp_path / "psk.key").write_text(base64.b64encode(key).decode() + "\n")
    (tmp_path / "mesh.yaml").write_text(
        "local: {identity: a.lab.pod.example.org, addresses: [192.0.2.1]}\n"
        "peerings:\n"
        "  - name: lab\n"
        "    authentication: psk\n"
        "    psk: [{id: one, valueFile: psk.key}]\n"
        "    lifetimes: {ike: 2h, child: 30m}\n"
        "    peers:\n"
        "      - {name: b, addresses: [192.0.2.2], identities: [b.lab.pod.example.org]}\n"
    )
    peer_map = load_peer_map_file(tmp_path / "mesh.yaml")
    policy = peer_map.policies[0]
    assert policy.psk_keys[0].secret == key
    assert policy.lifetimes.ike_seconds == 7200 and policy.lifetimes.child_seconds == 1800
    assert policy.peers[0].addresses == (ipaddress.ip_network("192.0.2.2/32"),)
    assert policy.ike_proposals == ("aes256gcm16-prfsha256-x25519-ke1_mlkem768", "aes256gcm16-prfsha256-x25519")
    # The operator's JSON form of the same map reads back identically, without the file.
    assert PeerMap.from_json(peer_map.to_json()) == peer_map


def test_unreadable_or_bad_yaml_files_raise_typed_errors(tmp_path):
    with pytest.raises(PeerMapError):
        load_peer_map_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("local: [unclosed\n")
    with pytest.raises(PeerMapError):
        load_peer_map_file(tmp_path / "bad.yaml")


def test_default_proposals_parse_to_the_secure_defaults():
    ike = parse_ike("aes256gcm16-prfsha256-x25519-ke1_mlkem768")
    assert ike.encr == ((EncrId.AES_GCM_16, 256),)
    assert ike.prf == (PrfId.HMAC_SHA2_256,)
    assert ike.ke == (KeId.CURVE25519,)
    assert ike.addke == ((KeId.ML_KEM_768,),)
    esp = parse_esp("aes256gcm16-esn")
    assert esp.esn == (EsnId.ESN,) and esp.ke == ()
    # As the engine reads it: ESN unnamed means either, ESN preferred.
    assert parse_esp("chacha20poly1305").esn == (EsnId.ESN, EsnId.NO_ESN)
    assert parse_esp("chacha20poly1305-noesn-esn-ecp384").esn == (EsnId.NO_ESN, EsnId.ESN)


def test_the_engine_speaks_more_than_the_mesh_allows():
    for text in ("aes256gcm16-prfsha256-modp3072", "aes256gcm16-prfsha256-x25519-ke1_mlkem512"):
        with pytest.raises(ProposalError, match="supported: aes128gcm16"):
            parse_ike(text)


@pytest.mark.parametrize("text", [
    "aes256cbc-prfsha256-x25519",        # CBC is not supported
    "aes256gcm16-prfsha1-x25519",         # SHA-1
    "aes256gcm16-prfsha256-modp1024",     # weak group
    "aes256gcm16-prfsha256",              # no group
    "aes256gcm16-x25519",                 # no PRF
    "aes256gcm16-prfsha256-x25519-ke2_mlkem768",  # ke2 without ke1
    "aes256gcm16-prfsha256-x25519-ke8_mlkem768",
    "aes256gcm16-aes256gcm16-prfsha256-x25519",
    "aes256gcm16-prfsha256-x25519-curve25519",  # the same group twice, under its alias
    "", "-", "x" * 200,
])
def test_bad_ike_proposals_are_refused(text):
    with pytest.raises(ProposalError):
        parse_ike(text)


@pytest.mark.parametrize("text", ["aes256gcm16-prfsha256-esn", "sha256", "esn", None, 5])
def test_bad_esp_proposals_are_refused(text):
    with pytest.raises(ProposalError):
        parse_esp(text)


def test_pod_identity_falls_back_to_uid_when_too_long():
    long_name = ".".join(["a" * 60] * 4)  # a valid 243-character pod name
    uid = "0f8f2a4e-3b0c-4bd6-9a55-2f1f7d3c9e10"
    assert pod_fqdn(long_name, "shop", "mesh.test", uid) == f"{uid}.shop.pod.mesh.test"
    assert pod_fqdn("web.v2", "shop", "mesh.test") == "web.v2.shop.pod.mesh.test"  # names are DNS subdomains
    for args in ((long_name, "shop", "mesh.test"), ("*", "shop", "mesh.test"), ("web-0", "sh.op", "mesh.test")):
        with pytest.raises(PeerMapError):
            pod_fqdn(*args)


def test_identity_names():
    assert pod_fqdn("web-0", "prod", "cluster.local") == "web-0.prod.pod.cluster.local"
    assert service_account_uri("prod", "web", "cluster.local") == "spiffe://cluster.local/ns/prod/sa/web"
    with pytest.raises(PeerMapError):
        pod_fqdn("Web_0", "prod", "cluster.local")


def test_standalone_example_in_docs_loads(tmp_path):
    import shutil
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "standalone-peer-map.yaml"
    shutil.copy(example, tmp_path / "mesh.yaml")
    (tmp_path / "legacy.psk").write_bytes(b"L" * 32)
    peer_map = load_peer_map_file(tmp_path / "mesh.yaml")
    assert [p.name for p in peer_map.policies] == ["lab/web-db", "lab/legacy"]
    assert peer_map.policies[1].psk_keys[0].secret == b"L" * 32
    assert str(peer_map.policies[1].peers[0].addresses[0]) == "198.51.100.0/24"


def test_dotted_and_very_long_pod_names_follow_docs_identity():
    assert pod_fqdn("web.v2", "prod", "cluster.local") == "web.v2.prod.pod.cluster.local"
    long_name = ".".join(["a" * 60] * 4)
    uid = "0f9a6c4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
    assert pod_fqdn(long_name, "prod", "cluster.local", uid) == f"{uid}.prod.pod.cluster.local"
    with pytest.raises(PeerMapError):
        pod_fqdn(long_name, "prod", "cluster.local")


# ---- the JSON the operator assembles from cached fragments -------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)  # quotes, escapes, non-ASCII
NETWORKS = st.one_of(
    st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda a, p: ipaddress.IPv6Network((a, p), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128)),
)
PEERS = st.builds(Peer, TEXT, st.lists(NETWORKS, max_size=3).map(tuple), st.lists(TEXT, max_size=2).map(tuple),
                  st.lists(TEXT, max_size=2).map(tuple))
PSK = st.lists(st.builds(PskKey, TEXT, st.binary(min_size=32, max_size=40), st.just(True),
                         st.one_of(st.none(), st.integers(0, 2**63 - 1))), min_size=1, max_size=2).map(tuple)


@st.composite
def policies(draw):
    keys = draw(st.one_of(st.just(()), PSK))
    return PeeringPolicy(draw(TEXT), tuple(draw(st.lists(PEERS, max_size=4))),
                         auth=AuthKind.PSK if keys else AuthKind.CERTIFICATE, psk_keys=keys,
                         enforcement=draw(st.sampled_from(Enforcement)), tfc_padding=draw(st.booleans()))


MAPS = st.builds(
    PeerMap, st.integers(0, 2**63 - 1),
    st.builds(LocalIdentity, TEXT, TEXT, TEXT, TEXT,
              st.lists(NETWORKS.map(lambda n: n.network_address), max_size=2).map(tuple)),
    st.lists(policies(), max_size=3).map(tuple), st.lists(TEXT, max_size=3).map(tuple))


@settings(max_examples=300, deadline=None)
@given(MAPS)
def test_assembled_json_is_byte_for_byte_json_dumps_of_the_model(peer_map):
    expected = json.dumps(peer_map.to_dict(), separators=(",", ":")).encode()
    assert peer_map.to_json() == expected
    assert peer_map.to_json() == expected  # again, from the fragments the first call cached


def test_a_peer_entry_is_serialised_once_whatever_the_maps_that_list_it(monkeypatch):
    from ipsec_mesh.meshapi import model

    calls = []
    original = model._peer_to_dict
    monkeypatch.setattr(model, "_peer_to_dict", lambda peer: calls.append(peer) or original(peer))
    shared = sample_map().policies[0].peers[0]
    maps = [PeerMap(n, sample_map().local, (PeeringPolicy(name=f"p{n}", peers=(shared,)),)) for n in range(5)]
    for peer_map in maps:
        assert PeerMap.from_json(peer_map.to_json()) == peer_map
    assert calls == [shared]


def test_the_policies_of_one_peering_share_one_serialised_head():
    first, second = (PeeringPolicy(name="prod/web", peers=(peer,)) for peer in sample_map().policies[1].peers * 2)
    assert first is not second and first.json_head is second.json_head
