"""IANA numbers for IKEv2 (RFC 7296 and the registries that extend it).

Only numbers live here: no behaviour. Every other module of the IKE core names
protocol values through these enums so a wire value is never a bare literal.
"""

from __future__ import annotations

import enum

IKE_VERSION = 0x20  # major 2, minor 0
IKE_HEADER_LEN = 28
GENERIC_PAYLOAD_HEADER_LEN = 4
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948: IKE on port 4500 starts with 4 zero bytes
IKE_PORT = 500
NATT_PORT = 4500


class ExchangeType(enum.IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38
    IKE_INTERMEDIATE = 43  # RFC 9242
    IKE_FOLLOWUP_KE = 44  # RFC 9370


class HeaderFlag(enum.IntFlag):
    INITIATOR = 0x08  # sender is the original initiator of the IKE SA
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(enum.IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53  # RFC 7383 encrypted fragment


class ProtocolId(enum.IntEnum):
    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(enum.IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    KE = 4  # "D-H" before RFC 9370
    ESN = 5
    ADDKE1 = 6
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12


class EncrId(enum.IntEnum):
    DES = 2  # MUST NOT (RFC 8247)
    TRIPLE_DES = 3
    NULL = 11
    AES_CBC = 12
    AES_CTR = 13
    AES_CCM_8 = 14
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    NULL_AUTH_AES_GMAC = 21
    CHACHA20_POLY1305 = 28


class PrfId(enum.IntEnum):
    HMAC_MD5 = 1  # MUST NOT
    HMAC_SHA1 = 2
    AES128_XCBC = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    AES128_CMAC = 8


class IntegId(enum.IntEnum):
    NONE = 0
    HMAC_MD5_96 = 1  # MUST NOT
    HMAC_SHA1_96 = 2
    DES_MAC = 3  # MUST NOT
    KPDK_MD5 = 4  # MUST NOT
    AES_XCBC_96 = 5
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class KeId(enum.IntEnum):
    """Transform type 4 (and ADDKE1-7) IDs: Diffie-Hellman groups and KEMs."""

    NONE = 0
    MODP_768 = 1  # MUST NOT
    MODP_1024 = 2  # MUST NOT (RFC 8247 SHOULD NOT; refused here)
    MODP_1536 = 5
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31
    CURVE448 = 32
    ML_KEM_512 = 35
    ML_KEM_768 = 36
    ML_KEM_1024 = 37


class EsnId(enum.IntEnum):
    NO_ESN = 0
    ESN = 1


class TransformAttr(enum.IntEnum):
    KEY_LENGTH = 14  # always TV format (AF bit set)


class IdType(enum.IntEnum):
    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11


class CertEncoding(enum.IntEnum):
    X509_SIGNATURE = 4
    RAW_PUBLIC_KEY = 15


class AuthMethod(enum.IntEnum):
    RSA_SIG = 1
    SHARED_KEY_MIC = 2
    DSS_SIG = 3
    ECDSA_SHA256_P256 = 9
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    GENERIC_SECURE_PASSWORD = 12
    NULL_AUTH = 13
    DIGITAL_SIGNATURE = 14  # RFC 7427


class HashAlgorithm(enum.IntEnum):
    """RFC 7427 SIGNATURE_HASH_ALGORITHMS values."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5  # RFC 8420 (Ed25519/Ed448)


class TsType(enum.IntEnum):
    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


class NotifyType(enum.IntEnum):
    # Errors (< 16384)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    STATE_NOT_FOUND = 47  # RFC 9370
    # Status (>= 16384)
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    MULTIPLE_AUTH_SUPPORTED = 16404
    REDIRECT_SUPPORTED = 16406
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427
    CHILDLESS_IKEV2_SUPPORTED = 16418  # RFC 6023
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438  # RFC 9242
    ADDITIONAL_KEY_EXCHANGE = 16441  # RFC 9370
    # Private use (RFC 7296 §3.10.1: status types 40960-65535); peers that do not know it ignore it.
    # In IKE_AUTH: the initiator restarted and its kernel SAs with us still carry traffic; it
    # confirms with an INFORMATIONAL once the new CHILD_SA is installed (exchanges.ike_auth).
    IPSEC_MESH_KEPT_SAS = 51001

    @property
    def is_error(self) -> bool:
        return self.value < 16384


# RFC 8247 / RFC 8221 MUST NOT: refused in any proposal we receive or build.
FORBIDDEN_ENCR = frozenset({EncrId.DES, EncrId.NULL})
FORBIDDEN_PRF = frozenset({PrfId.HMAC_MD5})
FORBIDDEN_INTEG = frozenset({IntegId.HMAC_MD5_96, IntegId.DES_MAC, IntegId.KPDK_MD5})
FORBIDDEN_KE = frozenset({KeId.MODP_768, KeId.MODP_1024})

AEAD_ENCR = frozenset(
    {
        EncrId.AES_GCM_8,
        EncrId.AES_GCM_12,
        EncrId.AES_GCM_16,
        EncrId.AES_CCM_8,
        EncrId.AES_CCM_12,
        EncrId.AES_CCM_16,
        EncrId.CHACHA20_POLY1305,
    }
)


def notify_name(value: int) -> str:
    """NotifyType name for logs, also for values we do not know."""
    try:
        return NotifyType(value).name
    except ValueError:
        return f"notify {value}"
