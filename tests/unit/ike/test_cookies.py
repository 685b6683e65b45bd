"""Stateless cookies: bound to nonce, address and SPI; the secret rotates with one period of overlap."""

from ipsec_mesh.ike.cookies import CookieJar

NONCE, ADDR, SPI = b"n" * 32, "192.0.2.1", b"s" * 8


def test_cookie_is_bound_to_nonce_address_and_spi():
    jar = CookieJar(rotate_every=60)
    cookie = jar.make(NONCE, ADDR, SPI, now=0)
    assert jar.check(cookie, NONCE, ADDR, SPI, now=1)
    assert not jar.check(cookie, b"m" * 32, ADDR, SPI, now=1)
    assert not jar.check(cookie, NONCE, "192.0.2.2", SPI, now=1)
    assert not jar.check(cookie, NONCE, ADDR, b"t" * 8, now=1)
    assert not jar.check(cookie[:-1], NONCE, ADDR, SPI, now=1)
    assert not jar.check(bytes([cookie[0] ^ 1]) + cookie[1:], NONCE, ADDR, SPI, now=1)


def test_rotation_keeps_the_previous_secret_for_one_period():
    jar = CookieJar(rotate_every=60)
    cookie = jar.make(NONCE, ADDR, SPI, now=0)
    jar.check(b"", NONCE, ADDR, SPI, now=61)  # first rotation
    assert jar.check(cookie, NONCE, ADDR, SPI, now=62)
    newer = jar.make(NONCE, ADDR, SPI, now=62)
    assert newer != cookie
    jar.check(b"", NONCE, ADDR, SPI, now=130)  # second rotation: the first secret is gone
    assert not jar.check(cookie, NONCE, ADDR, SPI, now=131)
    assert jar.check(newer, NONCE, ADDR, SPI, now=131)


def test_a_cookie_for_an_ipv6_source_does_not_verify_for_an_ipv4_source():
    """Unframed, Ni | IPv6 | SPIi and Ni' | IPv4 | SPIi hash the same bytes when Ni' = Ni | IPv6[:12]
    and the IPv4 address is IPv6[12:] (issue 10): every field must be framed."""
    import ipaddress

    jar = CookieJar(rotate_every=60)
    v6 = ipaddress.ip_address("2001:db8::c000:201")
    cookie = jar.make(NONCE, str(v6), SPI, now=0)
    shifted_nonce = NONCE + v6.packed[:12]
    v4 = str(ipaddress.ip_address(v6.packed[12:]))
    assert not jar.check(cookie, shifted_nonce, v4, SPI, now=1)
    # And the other way round: a longer nonce cannot absorb an address's bytes either.
    cookie4 = jar.make(shifted_nonce, v4, SPI, now=0)
    assert not jar.check(cookie4, NONCE, str(v6), SPI, now=1)
