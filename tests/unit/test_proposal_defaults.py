"""The engine's defaults (what it accepts when nothing narrower is configured) and the mesh's
defaults (what a peering offers unless it names its own) are named apart; the hybrid is spelt once."""

from ipsec_mesh.ike import ProtocolId, parse_proposal
from ipsec_mesh.ike.proposals import HYBRID_IKE, engine_default_esp_proposals, engine_default_ike_proposals
from ipsec_mesh.meshapi import proposals as mesh


def test_the_mesh_and_the_engine_offer_the_same_hybrid_first():
    assert mesh.MESH_DEFAULT_IKE is HYBRID_IKE
    assert mesh.MESH_DEFAULT_IKE_PROPOSALS[0] is HYBRID_IKE
    assert engine_default_ike_proposals()[0] == parse_proposal(HYBRID_IKE, ProtocolId.IKE) == mesh.parse_ike(HYBRID_IKE)


def test_every_mesh_default_is_one_the_engine_accepts_by_default():
    engine_ike, engine_esp = engine_default_ike_proposals(), engine_default_esp_proposals()
    for text in mesh.MESH_DEFAULT_IKE_PROPOSALS:
        spec = mesh.parse_ike(text)
        assert any(set(spec.encr) <= set(e.encr) and set(spec.prf) <= set(e.prf) and set(spec.ke) <= set(e.ke)
                   and spec.addke == e.addke for e in engine_ike), text
    esp = mesh.parse_esp(mesh.MESH_DEFAULT_ESP)
    assert any(set(esp.encr) <= set(e.encr) and set(esp.esn) <= set(e.esn) for e in engine_esp)


def test_no_unqualified_default_names_are_left():
    assert not hasattr(mesh, "DEFAULT_IKE") and not hasattr(mesh, "DEFAULT_ESP")
