"""The local token authority as the TokenAuthenticator's review function, and the admin token."""

from __future__ import annotations

import stat

import pytest

from ipsec_mesh_operator.controller.index import PodInfo
from ipsec_mesh_operator.controller.token_review import Caller, TokenAuthenticator, Unauthenticated
from ipsec_mesh_operator.standalone import AdminToken, InvalidToken, TokenAuthority
from ipsec_mesh_operator.standalone.tokens import load_or_create_key

WEB = PodInfo("shop", "web", "uid-web", "web", {}, ("10.0.0.1",))


def _authority(now, pods=None):
    pods = {WEB.key: WEB} if pods is None else pods
    return TokenAuthority(b"k" * 32, lambda ns, name: pods.get((ns, name)), clock=lambda: now[0])


async def test_a_genuine_token_authenticates_as_its_pod():
    now = [1_000_000.0]
    authority = _authority(now)
    authenticator = TokenAuthenticator(authority.review, "ipsec-mesh")
    token = authority.issue(WEB, "ipsec-mesh", 600)
    assert await authenticator.authenticate(f"Bearer {token}") == Caller("shop", "web", "web", "uid-web")


def test_expiry_future_issue_and_pod_binding():
    now = [1_000_000.0]
    pods = {WEB.key: WEB}
    authority = _authority(now, pods)
    token = authority.issue(WEB, "ipsec-mesh", 600)
    now[0] += 599
    assert authority.verify(token, ["ipsec-mesh"])["pod"] == "web"
    now[0] += 1
    with pytest.raises(InvalidToken, match="expired"):
        authority.verify(token, ["ipsec-mesh"])
    now[0] = 1_000_000.0 - 3600
    with pytest.raises(InvalidToken, match="future"):
        authority.verify(token, ["ipsec-mesh"])
    now[0] = 1_000_000.0
    pods[WEB.key] = PodInfo("shop", "web", "uid-other", "web", {}, ("10.0.0.1",))  # same name, a new pod
    with pytest.raises(InvalidToken, match="no longer exists"):
        authority.verify(token, ["ipsec-mesh"])


async def test_review_refusals_read_like_the_api_servers():
    now = [1_000_000.0]
    authority = _authority(now)
    foreign = authority.issue(WEB, "other", 60)
    review = await authority.review({"spec": {"token": foreign, "audiences": ["ipsec-mesh"]}})
    assert review["status"] == {"authenticated": False, "error": "token audiences invalid"}
    for garbage in ("", "ims1.", "ims1.a.b", "x" * 9000, None, "ims1.e30." + "A" * 43):
        review = await authority.review({"spec": {"token": garbage, "audiences": ["ipsec-mesh"]}})
        assert review["status"]["authenticated"] is False
    authenticator = TokenAuthenticator(authority.review, "ipsec-mesh")
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate("Bearer ims1.e30.AAAA")


def test_key_and_admin_token_persist_with_mode_0600(tmp_path):
    key = load_or_create_key(tmp_path / "key")
    assert load_or_create_key(tmp_path / "key") == key and len(key) == 32
    first = AdminToken(tmp_path / "admin")
    value = (tmp_path / "admin").read_text().strip()
    assert AdminToken(tmp_path / "admin").allows(f"Bearer {value}") and first.allows(f"Bearer {value}")
    assert not first.allows(f"Bearer {value[:-1]}") and not first.allows(value) and not first.allows(None)
    for path in (tmp_path / "key", tmp_path / "admin"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (tmp_path / "short").write_bytes(b"123")
    with pytest.raises(InvalidToken):
        load_or_create_key(tmp_path / "short")


def _variants(token):
    """Spellings of `token` that a non-strict base64url decoder reads as the same bytes."""
    prefix, payload, signature = token[:5], *token[5:].split(".")
    return [
        f"{prefix}{payload}.{signature}=",                      # padding
        f"{prefix}{payload}.{signature}==",
        f"{prefix}{payload}=.{signature}" if len(payload) % 4 == 3 else f"{prefix}{payload}==.{signature}",
        f"{prefix}{payload}.{signature[:5]}*{signature[5:]}",   # junk characters are skipped
        f"{prefix}{payload}.{signature[:5]}\n{signature[5:]}",
        f"{prefix}{payload[:4]}!{payload[4:]}.{signature}",
        f"{prefix}{payload}.{signature[:-1]}{chr(ord(signature[-1]) + 1)}",  # non-canonical trailing bits
    ]


def test_only_the_exact_token_text_verifies():
    now = [1_000_000.0]
    authority = _authority(now)
    token = authority.issue(WEB, "ipsec-mesh", 600)
    assert authority.verify(token, ["ipsec-mesh"])["pod"] == "web"
    for variant in _variants(token):
        assert variant != token
        with pytest.raises(InvalidToken, match="malformed"):
            authority.verify(variant, ["ipsec-mesh"])


async def test_bearer_headers_are_parsed_strictly():
    now = [1_000_000.0]
    authority = _authority(now)
    authenticator = TokenAuthenticator(authority.review, "ipsec-mesh")
    token = authority.issue(WEB, "ipsec-mesh", 600)
    assert await authenticator.authenticate(f"Bearer {token}")
    for header in (f"Bearer  {token}", f"Bearer {token} ", f"Bearer {token}\t",
                   f"Bearer {token}\x00", f"Bearer \t{token}"):
        with pytest.raises(Unauthenticated, match="malformed"):
            await authenticator.authenticate(header)


def test_the_admin_token_is_compared_as_sent(tmp_path):
    admin = AdminToken(tmp_path / "admin")
    value = (tmp_path / "admin").read_text().strip()
    assert admin.allows(f"Bearer {value}")
    for header in (f"Bearer {value} ", f"Bearer  {value}", f"Bearer {value}\n"):
        assert not admin.allows(header)
