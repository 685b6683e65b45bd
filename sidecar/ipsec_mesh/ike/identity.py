"""IKEv2 identities (RFC 7296 section 3.5): parse, validate, print and match.

Text syntax (shared by `Identity.parse`, `str(identity)` and patterns):

    fqdn:pod.ns.pod.mesh     email:a@b.example     ipv4:10.0.0.1    ipv6:fd00::1
    dn:CN=x,O=y (RFC 4514)   keyid:0a1b2c (hex)

Without a prefix: an IP address is ID_IPV4/IPV6_ADDR, text containing "@" is
ID_RFC822_ADDR, text containing "=" is a DN, anything else is ID_FQDN.
See docs/identity.md for which type a pod uses.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from ..records import record
from . import der
from .constants import IdType
from .errors import IdentityError, InvariantError
from .payloads import IdiPayload, IdPayload, IdrPayload
from .wire import remember

MAX_FQDN_LEN = 253
MAX_EMAIL_LEN = 254
MAX_DN_LEN = 1024
MAX_KEY_ID_LEN = 64

_RECEIVED: dict[tuple[int, bytes], "Identity"] = {}  # from_payload's validated identities (wire.remember)
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$")
_EMAIL_LOCAL = re.compile(r"^[!-~]+$")  # printable ASCII, no space
_PRINTABLE = re.compile(rb"^[A-Za-z0-9 '()+,\-./:=?]*\Z")  # X.680 PrintableString

_PREFIXES = {
    "fqdn": IdType.ID_FQDN,
    "email": IdType.ID_RFC822_ADDR,
    "rfc822": IdType.ID_RFC822_ADDR,
    "ipv4": IdType.ID_IPV4_ADDR,
    "ipv6": IdType.ID_IPV6_ADDR,
    "dn": IdType.ID_DER_ASN1_DN,
    "keyid": IdType.ID_KEY_ID,
}
_PRINT_PREFIX = {
    IdType.ID_FQDN: "fqdn",
    IdType.ID_RFC822_ADDR: "email",
    IdType.ID_IPV4_ADDR: "ipv4",
    IdType.ID_IPV6_ADDR: "ipv6",
    IdType.ID_DER_ASN1_DN: "dn",
    IdType.ID_KEY_ID: "keyid",
}
_IP_LENGTH = {IdType.ID_IPV4_ADDR: 4, IdType.ID_IPV6_ADDR: 16}

# Directory string tags and how to decode them (X.520 / RFC 5280 DirectoryString).
_STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x14: "latin-1",  # TeletexString (T61): latin-1 is what everyone means in practice
    0x16: "ascii",  # IA5String
    0x1A: "ascii",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}

# Attribute names and length limits as cryptography's x509.Name has them (RFC 4514, X.520),
# so that DNs print and validate as they did when cryptography.x509 did it.
_SHORT_NAMES = {
    "2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
    "2.5.4.6": "C", "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}
_LENGTH_LIMITS = {"2.5.4.6": (2, 2), "1.3.6.1.4.1.311.60.2.1.3": (2, 2), "2.5.4.3": (1, 64)}
_RFC4514_SPECIAL = {"\\": "\\\\", '"': '\\"', "+": "\\+", ",": "\\,", ";": "\\;", "<": "\\<", ">": "\\>",
                    "\0": "\\00"}

DnAttribute = tuple[str, str]  # (dotted OID, normalized value)
DnKey = tuple[frozenset[DnAttribute], ...]  # one frozenset per RDN, in order


@record(frozen=True)
class Identity:
    id_type: IdType
    data: bytes

    # -- construction --------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "Identity":
        """An identity from its text form; raises IdentityError on anything malformed."""
        if not isinstance(text, str) or not text.strip():
            raise IdentityError("empty identity")
        text = text.strip()
        prefix, sep, rest = text.partition(":")
        if sep and prefix.lower() in _PREFIXES:
            return cls._from_typed_text(_PREFIXES[prefix.lower()], rest.strip())
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls._from_address(addr)
        if "@" in text:
            return cls._from_typed_text(IdType.ID_RFC822_ADDR, text)
        if "=" in text:
            return cls._from_typed_text(IdType.ID_DER_ASN1_DN, text)
        return cls._from_typed_text(IdType.ID_FQDN, text)

    @classmethod
    def _from_typed_text(cls, id_type: IdType, text: str) -> "Identity":
        if id_type in _IP_LENGTH:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                raise IdentityError(f"not an IP address: {text!r}") from None
            identity = cls._from_address(addr)
            if identity.id_type != id_type:
                raise IdentityError(f"{text!r} is not an {_PRINT_PREFIX[id_type]} address")
            return identity
        if id_type == IdType.ID_DER_ASN1_DN:
            return cls.validated(IdType.ID_DER_ASN1_DN, dn_from_text(text))
        if id_type == IdType.ID_KEY_ID:
            try:
                data = bytes.fromhex(text)
            except ValueError:
                raise IdentityError(f"key id must be hex: {text!r}") from None
            return cls.validated(IdType.ID_KEY_ID, data)
        try:
            data = text.encode("ascii")
        except UnicodeEncodeError:
            raise IdentityError(f"identity must be ASCII: {text!r}") from None
        return cls.validated(id_type, data)

    @classmethod
    def _from_address(cls, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> "Identity":
        id_type = IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR
        return cls(id_type, addr.packed)

    @classmethod
    def from_payload(cls, p: IdPayload) -> "Identity":
        """Validate a received IDi/IDr payload."""
        data = bytes(p.data)
        # A peer sends the same identity in every IKE SA: the checks (a regular expression
        # per FQDN label) run once per distinct (type, bytes); refusals are not memoised.
        key = (p.id_type, data)
        identity = _RECEIVED.get(key)
        if identity is not None and identity.__class__ is cls:
            return identity
        try:
            id_type = IdType(p.id_type)
        except ValueError:
            raise IdentityError(f"unsupported ID type {p.id_type}") from None
        identity = cls.validated(id_type, data)
        if identity.is_pattern():
            raise IdentityError("a wildcard is not an identity")
        remember(_RECEIVED, key, identity)  # validated data is short: at most MAX_DN_LEN bytes
        return identity

    @classmethod
    def validated(cls, id_type: IdType, data: bytes) -> "Identity":
        """An Identity whose data has been checked against the rules of its type."""
        _VALIDATORS.get(id_type, _reject_type)(id_type, data)
        return cls(id_type, data)

    # -- output ----------------------------------------------------------------------
    def to_payload(self, initiator: bool) -> IdiPayload | IdrPayload:
        cls = IdiPayload if initiator else IdrPayload
        return cls(int(self.id_type), self.data)

    def __str__(self) -> str:
        return f"{_PRINT_PREFIX[self.id_type]}:{self.value_text()}"

    def value_text(self) -> str:
        """The value without its type prefix."""
        if self.id_type in _IP_LENGTH:
            return str(ipaddress.ip_address(self.data))
        if self.id_type == IdType.ID_DER_ASN1_DN:
            return dn_text(self.data)
        if self.id_type == IdType.ID_KEY_ID:
            return self.data.hex()
        return self.data.decode("ascii")

    # -- matching ----------------------------------------------------------------------
    def is_pattern(self) -> bool:
        """Whether this identity holds a wildcard (allowed in configuration, not on the wire)."""
        if self.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return b"*" in self.data
        if self.id_type == IdType.ID_DER_ASN1_DN:
            return any(value == "*" for rdn in dn_key(self.data) for _, value in rdn)
        return False

    def matches(self, pattern: "Identity | str") -> bool:
        """Whether this (peer) identity satisfies a configured pattern.

        Exact match of type and value, plus: "*" or "%any" matches anything; an FQDN
        pattern "*.ns.mesh" matches any name with at least one label before
        ".ns.mesh"; an email pattern "*@domain" matches any mailbox at that domain;
        an IP pattern may be a network ("ipv4:10.0.0.0/8"); DNs compare RDN by RDN
        (case- and whitespace-insensitive), and an attribute value "*" matches any
        value. FQDNs and email domains compare case-insensitively.
        """
        if isinstance(pattern, str):
            compiled = _compiled_pattern(pattern)
            if compiled is None or compiled is True:
                return bool(compiled)
            if not isinstance(compiled, Identity):
                return self.id_type in _IP_LENGTH and ipaddress.ip_address(self.data) in compiled  # type: ignore[operator]
            pattern = compiled
        if pattern.id_type != self.id_type:
            return False
        if self.id_type == IdType.ID_FQDN:
            return _fqdn_matches(self.data.decode("ascii"), pattern.data.decode("ascii"))
        if self.id_type == IdType.ID_RFC822_ADDR:
            return _email_matches(self.data.decode("ascii"), pattern.data.decode("ascii"))
        if self.id_type == IdType.ID_DER_ASN1_DN:
            return dn_matches(self.data, pattern.data)
        return self.data == pattern.data


# -- validation -------------------------------------------------------------------------
def _check_fqdn(_: IdType, data: bytes) -> None:
    text = _ascii(data, "FQDN")
    if not 0 < len(data) <= MAX_FQDN_LEN:
        raise IdentityError(f"FQDN length {len(data)} outside 1..{MAX_FQDN_LEN}")
    labels = text.split(".")
    for i, label in enumerate(labels):
        if i == 0 and label == "*":
            continue  # wildcard pattern
        if len(label) > 63 or not _LABEL.match(label):
            raise IdentityError(f"bad FQDN label {label!r}")


def _check_email(_: IdType, data: bytes) -> None:
    text = _ascii(data, "RFC822 address")
    local, at, domain = text.rpartition("@")
    if not at or not local or len(data) > MAX_EMAIL_LEN or not _EMAIL_LOCAL.match(local):
        raise IdentityError(f"bad RFC822 address {text!r}")
    _check_fqdn(IdType.ID_FQDN, domain.encode("ascii"))


def _check_ip(id_type: IdType, data: bytes) -> None:
    if len(data) != _IP_LENGTH[id_type]:
        raise IdentityError(f"{id_type.name} must be {_IP_LENGTH[id_type]} bytes, got {len(data)}")


def _check_dn(_: IdType, data: bytes) -> None:
    if len(data) > MAX_DN_LEN:
        raise IdentityError("distinguished name too long")
    for rdn in _parse_dn(data):
        if len(set(rdn)) != len(rdn):
            raise IdentityError("duplicate attribute in an RDN")
        for oid, value in rdn:
            least, most = _LENGTH_LIMITS.get(oid, (0, MAX_DN_LEN))
            if not least <= len(value.encode("utf-8")) <= most:
                raise IdentityError(f"DN attribute {oid} must be {least}..{most} octets")


def _check_key_id(_: IdType, data: bytes) -> None:
    if not 0 < len(data) <= MAX_KEY_ID_LEN:
        raise IdentityError(f"key id length {len(data)} outside 1..{MAX_KEY_ID_LEN}")


def _reject_type(id_type: IdType, _: bytes) -> None:
    raise IdentityError(f"unsupported ID type {id_type.name}")


_VALIDATORS = {
    IdType.ID_FQDN: _check_fqdn,
    IdType.ID_RFC822_ADDR: _check_email,
    IdType.ID_IPV4_ADDR: _check_ip,
    IdType.ID_IPV6_ADDR: _check_ip,
    IdType.ID_DER_ASN1_DN: _check_dn,
    IdType.ID_KEY_ID: _check_key_id,
}


def _ascii(data: bytes, what: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise IdentityError(f"{what} must be ASCII") from None


@lru_cache(maxsize=1024)
def _compiled_pattern(pattern: str) -> "bool | None | Identity | ipaddress.IPv4Network | ipaddress.IPv6Network":
    """A configured pattern parsed once (it is checked on every IKE_AUTH): True for
    "*"/"%any", a network, an Identity, or None when it is not a valid identity."""
    text = pattern.strip()
    if text in ("*", "%any"):
        return True
    network = _parse_network(text)
    if network is not None:
        return network
    try:
        return Identity.parse(text)
    except IdentityError:
        return None


def _parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A network pattern ("10.0.0.0/8", "ipv6:fd00::/64"), or None when `text` is not one."""
    prefix, sep, rest = text.partition(":")
    value = rest if sep and prefix.lower() in ("ipv4", "ipv6") else text
    if "/" not in value:
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


# -- matching helpers -------------------------------------------------------------------
def _fqdn_matches(name: str, pattern: str) -> bool:
    name, pattern = name.lower(), pattern.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return name.endswith(suffix) and len(name) > len(suffix)
    return name == pattern


def _email_matches(address: str, pattern: str) -> bool:
    local, _, domain = address.rpartition("@")
    p_local, _, p_domain = pattern.rpartition("@")
    if not _fqdn_matches(domain, p_domain):
        return False
    return p_local == "*" or local == p_local


def dn_attributes(data: bytes) -> list[list[tuple[str, str]]]:
    """RDNs of a DER Name as lists of (dotted OID, decoded value); IdentityError if malformed."""
    return _parse_dn(data)


def _parse_dn(data: bytes) -> list[list[tuple[str, str]]]:
    """RDNs of a DER Name as lists of (dotted OID, decoded value). Values must be strings."""
    try:
        rdns = []
        for rdn in der.children(der.read_single(data, der.SEQUENCE).value):
            if rdn.tag != der.SET:
                raise IdentityError("RDN is not a SET")
            attributes = [_attribute(a) for a in der.children(rdn.value)]
            if not attributes:
                raise IdentityError("empty RDN")
            rdns.append(attributes)
        return rdns
    except der.DerError as exc:
        raise IdentityError(f"bad DER distinguished name: {exc}") from None


def _attribute(tlv: der.Tlv) -> tuple[str, str]:
    if tlv.tag != der.SEQUENCE:
        raise IdentityError("attribute is not a SEQUENCE")
    parts = der.children(tlv.value)
    if len(parts) != 2 or parts[0].tag != der.OBJECT_IDENTIFIER:
        raise IdentityError("attribute is not (OID, value)")
    codec = _STRING_CODECS.get(parts[1].tag)
    if codec is None:
        raise IdentityError(f"unsupported DN attribute value type 0x{parts[1].tag:02x}")
    if parts[1].tag == 0x13 and not _PRINTABLE.match(parts[1].value):
        raise IdentityError("PrintableString with a character outside its set")
    try:
        return der.oid_to_dotted(parts[0].value), parts[1].value.decode(codec)
    except UnicodeDecodeError:
        raise IdentityError("undecodable string in distinguished name") from None


def dn_key(data: bytes) -> DnKey:
    """A comparable form of a DER Name: RDNs in order, values normalized (RFC 5280 7.1, simplified)."""
    return tuple(
        frozenset((oid, " ".join(value.split()).casefold()) for oid, value in rdn)
        for rdn in _parse_dn(data)
    )


def dn_text(data: bytes) -> str:
    """The RFC 4514 string of a DER Name (last RDN first), as cryptography's rfc4514_string."""
    return ",".join(
        "+".join(f"{_SHORT_NAMES.get(oid, oid)}={_rfc4514_escape(value)}" for oid, value in rdn)
        for rdn in reversed(_parse_dn(data))
    )


# RFC 4514 section 3, character classes of an attribute value (lead, inner, trail octets
# that need no escaping) and its escape pairs: a special character, or hex octets.
_RFC4514_LEAD = r"\x01-\x1f\x21\x24-\x2a\x2d-\x3a\x3d\x3f-\x5b\x5d-\x7f\x80-\U0010ffff"
_RFC4514_INNER = r"\x01-\x21\x23-\x2a\x2d-\x3a\x3d\x3f-\x5b\x5d-\x7f\x80-\U0010ffff"
_RFC4514_TRAIL = r"\x01-\x1f\x21\x23-\x2a\x2d-\x3a\x3d\x3f-\x5b\x5d-\x7f\x80-\U0010ffff"
_RFC4514_PAIR = r'\\(?:[\\ #="+,;<>]|[0-9A-Fa-f]{2})'
_RFC4514_VALUE = re.compile(
    f"(?:(?:[{_RFC4514_LEAD}]|{_RFC4514_PAIR})(?:(?:[{_RFC4514_INNER}]|{_RFC4514_PAIR})*"
    f"(?:[{_RFC4514_TRAIL}]|{_RFC4514_PAIR}))?)?")
_RFC4514_ESCAPES = re.compile(r'\\([\\ #="+,;<>])|((?:\\[0-9A-Fa-f]{2})+)')
_RFC4514_TYPE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+|[A-Za-z][A-Za-z0-9-]*")
_RFC4514_HEX = re.compile(r"#((?:[0-9A-Fa-f]{2})+)")
_OIDS_BY_SHORT_NAME = {name: oid for oid, name in _SHORT_NAMES.items()}
# The string type each attribute is written with (RFC 5280 appendix A), UTF8String otherwise.
_PRINTABLE_ATTRIBUTES = frozenset({"2.5.4.6", "1.3.6.1.4.1.311.60.2.1.3", "2.5.4.5", "2.5.4.46"})
_IA5_ATTRIBUTES = frozenset({"1.2.840.113549.1.9.1", "0.9.2342.19200300.100.1.25"})


def dn_from_text(text: str) -> bytes:
    """The DER Name of an RFC 4514 string (first RDN last), as cryptography's parser made it.

    Attribute types: CN, L, ST, O, OU, C, STREET, DC, UID (case as written) or a dotted
    OID; values with RFC 4514 escapes or as #hex (UTF-8 octets). IdentityError otherwise.
    """
    rdns: list[bytes] = []
    pos = 0
    while text:
        attributes = []
        while True:
            oid, value, pos = _rfc4514_attribute(text, pos)
            tag = 0x13 if oid in _PRINTABLE_ATTRIBUTES else 0x16 if oid in _IA5_ATTRIBUTES else 0x0C
            attributes.append(der.encode_sequence(der.encode_oid(oid), der.encode_tlv(tag, value.encode("utf-8"))))
            if text[pos:pos + 1] != "+":
                break
            pos += 1
        rdns.append(der.encode_set(*attributes))
        if pos == len(text):
            break
        if text[pos] != ",":
            raise IdentityError(f"bad distinguished name {text!r}: unexpected {text[pos]!r} at {pos}")
        pos += 1
    return der.encode_sequence(*reversed(rdns))


def _rfc4514_attribute(text: str, pos: int) -> tuple[str, str, int]:
    """(dotted OID, value, position after it) of the attributeTypeAndValue at `pos`."""
    match = _RFC4514_TYPE.match(text, pos)
    if match is None or text[match.end():match.end() + 1] != "=":
        raise IdentityError(f"bad distinguished name {text!r}: no attribute type at {pos}")
    name = match.group()
    if name[0].isdigit():
        arcs = [int(arc) for arc in name.split(".")]
        if arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
            raise IdentityError(f"bad distinguished name {text!r}: bad OID {name}")
        oid = name
    elif name in _OIDS_BY_SHORT_NAME:
        oid = _OIDS_BY_SHORT_NAME[name]
    else:
        raise IdentityError(f"bad distinguished name {text!r}: unknown attribute type {name!r}")
    pos = match.end() + 1
    try:
        hex_value = _RFC4514_HEX.match(text, pos)
        if hex_value is not None:
            return oid, bytes.fromhex(hex_value.group(1)).decode("utf-8"), hex_value.end()
        value = _RFC4514_VALUE.match(text, pos)
        if value is None:
            raise InvariantError("the RFC 4514 value pattern matches the empty string")
        return oid, _RFC4514_ESCAPES.sub(_rfc4514_unescape, value.group()), value.end()
    except UnicodeDecodeError:
        raise IdentityError(f"bad distinguished name {text!r}: escaped octets are not UTF-8") from None


def _rfc4514_unescape(match: re.Match[str]) -> str:
    special, octets = match.groups()
    return special if special else bytes.fromhex(octets.replace("\\", "")).decode("utf-8")


def _rfc4514_escape(value: str) -> str:
    if not value:
        return ""
    value = "".join(_RFC4514_SPECIAL.get(ch, ch) for ch in value)
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


def name_equal(a: bytes, b: bytes) -> bool:
    """Certificate name chaining: the same RDNs in order, each the same set of (OID, value)
    whatever the string types (cryptography's Name equality); malformed names are never equal."""
    if a == b:
        return True
    try:
        return [frozenset(rdn) for rdn in _parse_dn(a)] == [frozenset(rdn) for rdn in _parse_dn(b)]
    except IdentityError:
        return False


def dn_equal(a: bytes, b: bytes) -> bool:
    """Two DER Names are equal RDN by RDN (normalized values); malformed names are never equal."""
    try:
        return dn_key(a) == dn_key(b)
    except IdentityError:
        return False


def dn_matches(data: bytes, pattern: bytes) -> bool:
    """DER Name `data` equals `pattern` RDN by RDN; a pattern value "*" matches anything."""
    try:
        have, want = dn_key(data), dn_key(pattern)
    except IdentityError:
        return False
    if len(have) != len(want):
        return False
    for have_rdn, want_rdn in zip(have, want, strict=True):
        if have_rdn == want_rdn:
            continue
        wild = {oid for oid, value in want_rdn if value == "*"}
        exact = {(oid, value) for oid, value in want_rdn if oid not in wild}
        if {oid for oid, _ in have_rdn} != {oid for oid, _ in want_rdn}:
            return False
        if not exact <= have_rdn:
            return False
    return True
