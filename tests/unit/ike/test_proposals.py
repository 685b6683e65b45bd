"""Proposal selection over hostile offers: an unknown number is refused, never a crash."""

from __future__ import annotations

import pytest

from ipsec_mesh.ike.constants import ProtocolId, TransformType
from ipsec_mesh.ike.errors import NoProposalChosen
from ipsec_mesh.ike.payload_codec import decode_body, encode_body
from ipsec_mesh.ike.payloads import Proposal, SaPayload, Transform
from ipsec_mesh.ike.proposals import describe_offer, engine_default_esp_proposals, select

_SA = 33


def _offer_with_protocol(protocol: int) -> Proposal:
    """An ESP-looking offer as the codec decodes it, with the protocol ID byte replaced."""
    sa = SaPayload([Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", (Transform(TransformType.ENCR, 20, 256),))])
    body = bytearray(encode_body(sa))
    body[5] = protocol  # proposal substructure: last, reserved, length(2), number, protocol ID
    decoded = decode_body(_SA, bytes(body))
    assert isinstance(decoded, SaPayload)
    return decoded.proposals[0]


def test_an_offer_with_an_unknown_protocol_is_refused_not_a_crash():
    offer = _offer_with_protocol(9)
    assert offer.protocol == 9  # kept as a bare int by the codec
    with pytest.raises(NoProposalChosen, match="#1 9:"):
        select([offer], engine_default_esp_proposals())


def test_describe_offer_names_known_protocols():
    assert describe_offer(_offer_with_protocol(ProtocolId.ESP)).startswith("#1 ESP:")
