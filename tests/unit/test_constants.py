from ipsec_mesh.ike.constants import FORBIDDEN_KE, KeId, NotifyType


def test_error_notifies_are_below_16384():
    assert NotifyType.AUTHENTICATION_FAILED.is_error
    assert not NotifyType.COOKIE.is_error


def test_rfc8247_must_not_groups_are_forbidden():
    assert KeId.MODP_768 in FORBIDDEN_KE and KeId.MODP_1024 in FORBIDDEN_KE
    assert KeId.CURVE25519 not in FORBIDDEN_KE
