"""X.509 certificates (RFC 5280) read by the IKE core itself, without `cryptography.x509`.

`cryptography.x509` costs every sidecar about 1.1 MB of private memory (it loads
email, calendar, datetime and its Python classes); the sidecar needs only a few
fields of a certificate. `Certificate.from_der` parses strict DER (der.py) and
keeps what chain validation and identity binding use: the raw DER and TBS bytes,
the signature algorithm and value, serial number, issuer and subject as raw DER
Names, the validity period in POSIX seconds, the SubjectPublicKeyInfo (loaded as a
key by cryptography's hazmat `load_der_public_key`, which does not load x509), and the extensions certs.py
reads: basicConstraints, keyUsage, subjectKeyIdentifier and subjectAltName
(dNSName, rfc822Name, iPAddress, URI). Other extensions are kept as OID, critical
flag and raw value; a duplicated extension rejects the certificate (RFC 5280 4.2).
Every malformed input raises `der.DerError`; the differential and mutation tests
(tests/unit/ike/test_certificate.py) hold the fields equal to cryptography's.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from ..records import record
from . import der
from .der import DerError
from .errors import AuthenticationFailed, IdentityError
from .identity import dn_attributes
from .signatures import OID_RSASSA_PSS, SignatureAlgorithm

MAX_CERT_DER_BYTES = 64 * 1024  # a PEM bundle's certificate; IKE CERT payloads are capped lower
MAX_SAN_ENTRIES = der.MAX_DEPTH_ITEMS
MAX_PEM_CERTIFICATES = 64

OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_KEY_USAGE = "2.5.29.15"
OID_EXTENDED_KEY_USAGE = "2.5.29.37"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
OID_SUBJECT_KEY_IDENTIFIER = "2.5.29.14"
OID_AUTHORITY_KEY_IDENTIFIER = "2.5.29.35"

# keyUsage bit numbers (RFC 5280 4.2.1.3)
KU_DIGITAL_SIGNATURE = 0
KU_KEY_CERT_SIGN = 5

# Certificate signature algorithms: OID -> (key kind, hash class or None). What
# cryptography's verify_directly_issued_by accepts; SHA-1 and MD5 are listed so that
# they are refused as weak rather than as unknown.
_SIG_ECDSA, _SIG_RSA, _SIG_DSA, _SIG_ED25519, _SIG_ED448 = "ecdsa", "rsa", "dsa", "ed25519", "ed448"
_SIGNATURES: dict[str, tuple[str, type[hashes.HashAlgorithm] | None]] = {
    "1.2.840.10045.4.1": (_SIG_ECDSA, hashes.SHA1),
    "1.2.840.10045.4.3.1": (_SIG_ECDSA, hashes.SHA224),
    "1.2.840.10045.4.3.2": (_SIG_ECDSA, hashes.SHA256),
    "1.2.840.10045.4.3.3": (_SIG_ECDSA, hashes.SHA384),
    "1.2.840.10045.4.3.4": (_SIG_ECDSA, hashes.SHA512),
    "2.16.840.1.101.3.4.3.9": (_SIG_ECDSA, hashes.SHA3_224),
    "2.16.840.1.101.3.4.3.10": (_SIG_ECDSA, hashes.SHA3_256),
    "2.16.840.1.101.3.4.3.11": (_SIG_ECDSA, hashes.SHA3_384),
    "2.16.840.1.101.3.4.3.12": (_SIG_ECDSA, hashes.SHA3_512),
    "1.2.840.113549.1.1.4": (_SIG_RSA, hashes.MD5),
    "1.2.840.113549.1.1.5": (_SIG_RSA, hashes.SHA1),
    "1.2.840.113549.1.1.14": (_SIG_RSA, hashes.SHA224),
    "1.2.840.113549.1.1.11": (_SIG_RSA, hashes.SHA256),
    "1.2.840.113549.1.1.12": (_SIG_RSA, hashes.SHA384),
    "1.2.840.113549.1.1.13": (_SIG_RSA, hashes.SHA512),
    "2.16.840.1.101.3.4.3.13": (_SIG_RSA, hashes.SHA3_224),
    "2.16.840.1.101.3.4.3.14": (_SIG_RSA, hashes.SHA3_256),
    "2.16.840.1.101.3.4.3.15": (_SIG_RSA, hashes.SHA3_384),
    "2.16.840.1.101.3.4.3.16": (_SIG_RSA, hashes.SHA3_512),
    "1.2.840.10040.4.3": (_SIG_DSA, hashes.SHA1),
    "2.16.840.1.101.3.4.3.1": (_SIG_DSA, hashes.SHA224),
    "2.16.840.1.101.3.4.3.2": (_SIG_DSA, hashes.SHA256),
    "1.3.101.112": (_SIG_ED25519, None),
    "1.3.101.113": (_SIG_ED448, None),
}
WEAK_HASHES = (hashes.SHA1, hashes.MD5)


@record(frozen=True)
class Extension:
    oid: str
    critical: bool
    value: bytes  # the extnValue OCTET STRING's content


@record(frozen=True)
class BasicConstraints:
    ca: bool
    path_length: int | None


@record(frozen=True)
class SubjectAltNames:
    dns: tuple[str, ...]
    email: tuple[str, ...]
    ip: tuple[bytes, ...]  # packed, 4 or 16 octets
    uri: tuple[str, ...]


class Certificate:
    """A parsed certificate; equal and hashed by its DER bytes, like cryptography's."""

    __slots__ = ("der", "tbs", "signature_oid", "signature_params", "signature", "version",
                 "serial_number", "issuer", "subject", "not_before", "not_after", "spki",
                 "extensions", "basic_constraints", "key_usage", "subject_key_identifier",
                 "subject_alt_names", "_public_key")

    def __init__(self, data: bytes):
        if len(data) > MAX_CERT_DER_BYTES:
            raise DerError(f"certificate of {len(data)} bytes refused")
        self.der = bytes(data)
        outer = _sequence(der.read_single(self.der, der.SEQUENCE), 3, 3, "Certificate")
        tbs, algorithm, signature = outer
        self.tbs = tbs.encoded
        self.signature_oid, self.signature_params = _algorithm(algorithm)
        known = _SIGNATURES.get(self.signature_oid)
        if known is not None and self.signature_params is not None and (
                known[0] != _SIG_RSA or self.signature_params.encoded != der.NULL_TLV):
            raise DerError(f"unexpected parameters for signature algorithm {self.signature_oid}")
        self.signature = der.read_octets(_expect(signature, der.BIT_STRING, "signature").value)
        self._public_key: Any = None
        self.extensions: tuple[Extension, ...] = ()
        self.basic_constraints: BasicConstraints | None = None
        self.key_usage: int | None = None  # bit n of RFC 5280's KeyUsage is (1 << n)
        self.subject_key_identifier: bytes | None = None
        self.subject_alt_names: SubjectAltNames | None = None
        self._parse_tbs(_sequence(_expect(tbs, der.SEQUENCE, "TBSCertificate"), 6, 10, "TBSCertificate"), algorithm)

    @classmethod
    def from_der(cls, data: bytes) -> "Certificate":
        return cls(data)

    def _parse_tbs(self, fields: list[der.Tlv], outer_algorithm: der.Tlv) -> None:
        self.version = 0
        if fields[0].tag == 0xA0:
            self.version = der.read_integer(der.read_single(fields[0].value, der.INTEGER).value)
            if self.version not in (1, 2):  # v1 (0) is the DEFAULT, which DER leaves out
                raise DerError(f"unsupported certificate version {self.version}")
            fields = fields[1:]
        if len(fields) < 6:
            raise DerError(f"TBSCertificate has {len(fields)} fields after its version")
        serial, algorithm, issuer, validity, subject, spki, *rest = fields
        self.serial_number = der.read_integer(_expect(serial, der.INTEGER, "serialNumber").value)
        if len(serial.value) > 20 and not (len(serial.value) == 21 and serial.value[0] == 0):
            raise DerError("serial number longer than 20 octets")  # RFC 5280 4.1.2.2
        if self.serial_number <= 0:
            raise DerError("serial number is not positive")
        if algorithm.encoded != outer_algorithm.encoded:
            raise DerError("TBS signature algorithm differs from the certificate's (RFC 5280 4.1.1.2)")
        self.issuer = _name(issuer)
        self.subject = _name(subject)
        not_before, not_after = _sequence(_expect(validity, der.SEQUENCE, "validity"), 2, 2, "validity")
        self.not_before = der.read_time(not_before)
        self.not_after = der.read_time(not_after)
        spki_algorithm, key_bits = _sequence(_expect(spki, der.SEQUENCE, "subjectPublicKeyInfo"), 2, 2, "SPKI")
        _algorithm(spki_algorithm)
        der.read_bit_string(_expect(key_bits, der.BIT_STRING, "subjectPublicKey").value)
        self.spki = spki.encoded
        try:  # now, not on first use: a key cryptography cannot load makes the certificate unusable
            self._public_key = load_der_public_key(self.spki)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DerError(f"unusable subject public key: {exc}") from None
        self._parse_optional(rest)

    def _parse_optional(self, rest: list[der.Tlv]) -> None:
        tags = [tlv.tag for tlv in rest]
        # issuerUniqueID [1], subjectUniqueID [2] (IMPLICIT BIT STRING), extensions [3], in order
        if tags != sorted(set(tags)) or not set(tags) <= {0x81, 0xA1, 0x82, 0xA2, 0xA3}:
            raise DerError("unexpected field after subjectPublicKeyInfo")
        if (0x81 in tags or 0x82 in tags) and self.version < 1:
            raise DerError("unique identifiers need version 2 or 3")
        for tlv in rest:
            if tlv.tag in (0x81, 0x82):
                der.read_bit_string(tlv.value)
            elif tlv.tag == 0xA3:
                if self.version != 2:
                    raise DerError("extensions need version 3")
                self._parse_extensions(der.read_single(tlv.value, der.SEQUENCE).value)
            else:
                raise DerError("constructed unique identifier")

    def _parse_extensions(self, value: bytes) -> None:
        items = der.children(value)
        if not items:
            raise DerError("empty extensions")
        extensions: dict[str, Extension] = {}
        for item in items:
            parts = _sequence(_expect(item, der.SEQUENCE, "extension"), 2, 3, "extension")
            oid = der.oid_to_dotted(_expect(parts[0], der.OBJECT_IDENTIFIER, "extnID").value)
            critical = False
            if len(parts) == 3:
                critical = der.read_boolean(_expect(parts[1], der.BOOLEAN, "critical").value)
                if not critical:
                    raise DerError("critical FALSE must be left out (DER DEFAULT)")
            content = _expect(parts[-1], der.OCTET_STRING, "extnValue").value
            if oid in extensions:
                raise DerError(f"duplicate extension {oid}")
            extensions[oid] = Extension(oid, critical, content)
            _EXTENSION_READERS.get(oid, _ignore)(self, content)
        self.extensions = tuple(extensions.values())

    # -- what certs.py and the agent use ----------------------------------------------------
    def public_key(self) -> Any:
        """The subject's public key (a hazmat object)."""
        return self._public_key

    def extension(self, oid: str) -> Extension | None:
        return next((ext for ext in self.extensions if ext.oid == oid), None)

    def has_key_usage(self, bit: int) -> bool:
        return self.key_usage is not None and bool(self.key_usage >> bit & 1)

    def signature_hash(self) -> type[hashes.HashAlgorithm] | None:
        """The hash of the signature algorithm (None for EdDSA); UnsupportedAlgorithm if unknown."""
        if self.signature_oid == OID_RSASSA_PSS:
            try:
                return type(self._pss().hash_function())
            except AuthenticationFailed as exc:
                raise UnsupportedAlgorithm(str(exc)) from None
        known = _SIGNATURES.get(self.signature_oid)
        if known is None:
            raise UnsupportedAlgorithm(f"signature algorithm {self.signature_oid}")
        return known[1]

    def is_signed_by(self, issuer_key: Any) -> bool:
        """Whether `issuer_key` (a hazmat public key) made this certificate's signature."""
        try:
            if self.signature_oid == OID_RSASSA_PSS:
                algorithm = self._pss()
                if not isinstance(issuer_key, rsa.RSAPublicKey):
                    return False
                issuer_key.verify(self.signature, self.tbs, algorithm.pss_padding(), algorithm.hash_function())
                return True
            kind, hash_class = _SIGNATURES[self.signature_oid]
            if kind == _SIG_ECDSA and isinstance(issuer_key, ec.EllipticCurvePublicKey) and hash_class:
                issuer_key.verify(self.signature, self.tbs, ec.ECDSA(hash_class()))
            elif kind == _SIG_RSA and isinstance(issuer_key, rsa.RSAPublicKey) and hash_class:
                issuer_key.verify(self.signature, self.tbs, padding.PKCS1v15(), hash_class())
            elif kind == _SIG_DSA and isinstance(issuer_key, dsa.DSAPublicKey) and hash_class:
                issuer_key.verify(self.signature, self.tbs, hash_class())
            elif (kind == _SIG_ED25519 and isinstance(issuer_key, ed25519.Ed25519PublicKey)
                  or kind == _SIG_ED448 and isinstance(issuer_key, ed448.Ed448PublicKey)):
                issuer_key.verify(self.signature, self.tbs)
            else:
                return False
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm, KeyError, AuthenticationFailed):
            return False
        return True

    def _pss(self) -> SignatureAlgorithm:
        params = b"" if self.signature_params is None else self.signature_params.encoded
        return SignatureAlgorithm.from_identifier(der.encode_sequence(der.encode_oid(OID_RSASSA_PSS), params))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Certificate) and other.der == self.der

    def __hash__(self) -> int:
        return hash(self.der)

    def __repr__(self) -> str:
        return f"<Certificate serial={self.serial_number:x}>"


def _expect(tlv: der.Tlv, tag: int, what: str) -> der.Tlv:
    if tlv.tag != tag:
        raise DerError(f"{what}: expected tag 0x{tag:02x}, got 0x{tlv.tag:02x}")
    return tlv


def _sequence(tlv: der.Tlv, least: int, most: int, what: str) -> list[der.Tlv]:
    if tlv.tag != der.SEQUENCE:
        raise DerError(f"{what} is not a SEQUENCE")
    items = der.children(tlv.value)
    if not least <= len(items) <= most:
        raise DerError(f"{what} has {len(items)} fields")
    return items


def _algorithm(tlv: der.Tlv) -> tuple[str, der.Tlv | None]:
    parts = _sequence(tlv, 1, 2, "AlgorithmIdentifier")
    oid = der.oid_to_dotted(_expect(parts[0], der.OBJECT_IDENTIFIER, "algorithm").value)
    return oid, parts[1] if len(parts) == 2 else None


def _name(tlv: der.Tlv) -> bytes:
    """A Name's DER bytes, once every attribute has decoded as a directory string (identity.py)."""
    try:
        dn_attributes(tlv.encoded)
    except IdentityError as exc:
        raise DerError(f"bad Name: {exc}") from None
    return tlv.encoded


def _read_basic_constraints(cert: Certificate, value: bytes) -> None:
    parts = _sequence(der.read_single(value), 0, 2, "basicConstraints")
    ca = False
    if parts and parts[0].tag == der.BOOLEAN:
        ca = der.read_boolean(parts[0].value)
        if not ca:
            raise DerError("cA FALSE must be left out (DER DEFAULT)")
        parts = parts[1:]
    path_length = None
    if parts:
        if len(parts) != 1:
            raise DerError("unexpected field in basicConstraints")
        path_length = der.read_integer(_expect(parts[0], der.INTEGER, "pathLenConstraint").value)
        if not 0 <= path_length < 1 << 63:
            raise DerError("pathLenConstraint out of range")
    cert.basic_constraints = BasicConstraints(ca, path_length)


def _read_key_usage(cert: Certificate, value: bytes) -> None:
    bits = der.read_bit_string(der.read_single(value, der.BIT_STRING).value)
    # named bits, most significant bit of the first octet first
    cert.key_usage = sum(1 << i for i in range(len(bits) * 8) if bits[i // 8] >> (7 - i % 8) & 1)


def _read_subject_key_identifier(cert: Certificate, value: bytes) -> None:
    cert.subject_key_identifier = der.read_single(value, der.OCTET_STRING).value


def _read_subject_alt_name(cert: Certificate, value: bytes) -> None:
    names = der.children(der.read_single(value, der.SEQUENCE).value)
    if not names or len(names) > MAX_SAN_ENTRIES:
        raise DerError(f"subjectAltName with {len(names)} names")
    found: dict[int, list[Any]] = {0x82: [], 0x81: [], 0x87: [], 0x86: []}
    for name in names:
        if name.tag in (0x81, 0x82, 0x86):  # rfc822Name, dNSName, URI: IA5String
            if not name.value.isascii():
                raise DerError("non-ASCII IA5String in subjectAltName")
            found[name.tag].append(name.value.decode("ascii"))
        elif name.tag == 0x87:
            if len(name.value) not in (4, 16):
                raise DerError("iPAddress of neither 4 nor 16 octets")
            found[0x87].append(name.value)
        elif name.tag not in (0xA0, 0xA3, 0xA4, 0xA5, 0x88):
            # otherName, x400Address, directoryName, ediPartyName, registeredID are kept
            # out of what we expose; anything else is not a GeneralName
            raise DerError(f"unknown GeneralName tag 0x{name.tag:02x}")
    cert.subject_alt_names = SubjectAltNames(tuple(found[0x82]), tuple(found[0x81]),
                                             tuple(found[0x87]), tuple(found[0x86]))


def _read_extended_key_usage(_: Certificate, value: bytes) -> None:
    purposes = der.children(der.read_single(value, der.SEQUENCE).value)
    for purpose in purposes:
        der.oid_to_dotted(_expect(purpose, der.OBJECT_IDENTIFIER, "KeyPurposeId").value)


def _read_authority_key_identifier(_: Certificate, value: bytes) -> None:
    tags = [tlv.tag for tlv in der.children(der.read_single(value, der.SEQUENCE).value)]
    if tags != sorted(set(tags)) or not set(tags) <= {0x80, 0xA1, 0x82}:
        raise DerError("malformed authorityKeyIdentifier")


def _ignore(_: Certificate, __: bytes) -> None:
    """Extensions we do not read: kept raw; a critical one is refused by certs.py."""


_EXTENSION_READERS = {
    OID_BASIC_CONSTRAINTS: _read_basic_constraints,
    OID_KEY_USAGE: _read_key_usage,
    OID_SUBJECT_KEY_IDENTIFIER: _read_subject_key_identifier,
    OID_SUBJECT_ALT_NAME: _read_subject_alt_name,
    OID_EXTENDED_KEY_USAGE: _read_extended_key_usage,
    OID_AUTHORITY_KEY_IDENTIFIER: _read_authority_key_identifier,
}

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.DOTALL)


def certificates_from_pem(data: bytes) -> list[Certificate]:
    """Every CERTIFICATE block of a PEM text (other text ignored); DerError if there is none."""
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise DerError("no PEM CERTIFICATE block found")
    if len(blocks) > MAX_PEM_CERTIFICATES:
        raise DerError(f"more than {MAX_PEM_CERTIFICATES} certificates in one PEM text")
    certs = []
    for block in blocks:
        try:
            raw = binascii.a2b_base64(b"".join(block.split()), strict_mode=True)
        except binascii.Error:
            raise DerError("bad base64 in PEM certificate") from None
        certs.append(Certificate(raw))
    return certs
