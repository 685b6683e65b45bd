"""strongSwan-style proposal strings, limited to the algorithms ipsec-mesh supports.

An IKE proposal is a dash-joined list such as
``aes256gcm16-prfsha256-x25519-ke1_mlkem768``; an ESP proposal such as
``aes256gcm16-esn``. Each token names one transform; a type may appear more
than once (the peer picks one). Anything outside the fixed list below is
refused: no CBC, no SHA-1, no MODP below 2048.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from ipsec_mesh.ike.constants import EncrId, KeId, PrfId

from . import fields
from .errors import ProposalError

DEFAULT_IKE = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
# Offered after the hybrid one: a peer without RFC 9370 must refuse a proposal whose
# transform types it does not know, so the classic proposal is what lets it agree.
DEFAULT_IKE_CLASSIC = "aes256gcm16-prfsha256-x25519"
DEFAULT_IKE_PROPOSALS = (DEFAULT_IKE, DEFAULT_IKE_CLASSIC)
DEFAULT_ESP = "aes256gcm16-esn"

MAX_PROPOSAL_LENGTH = 128


@dataclass(frozen=True)
class Cipher:
    """An AEAD transform: its IANA ID and key length in bits."""

    encr: EncrId
    key_bits: int


CIPHERS: dict[str, Cipher] = {
    "aes128gcm16": Cipher(EncrId.AES_GCM_16, 128),
    "aes256gcm16": Cipher(EncrId.AES_GCM_16, 256),
    "chacha20poly1305": Cipher(EncrId.CHACHA20_POLY1305, 256),
}
PRFS: dict[str, PrfId] = {
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}
GROUPS: dict[str, KeId] = {
    "x25519": KeId.CURVE25519,
    "curve25519": KeId.CURVE25519,
    "ecp256": KeId.ECP_256,
    "ecp384": KeId.ECP_384,
    "modp2048": KeId.MODP_2048,
}
# Additional key exchanges (RFC 9370 ADDKE1..7): only ML-KEM-768 for now.
ADDITIONAL_KES: dict[str, KeId] = {"mlkem768": KeId.ML_KEM_768}
MAX_ADDKE_SLOT = 7


@dataclass(frozen=True)
class IkeProposal:
    text: str
    ciphers: tuple[Cipher, ...]
    prfs: tuple[PrfId, ...]
    groups: tuple[KeId, ...]
    #: (slot 1..7, KE) pairs; each slot lists the KEs offered for ADDKE<slot>.
    additional: tuple[tuple[int, tuple[KeId, ...]], ...]


@dataclass(frozen=True)
class EspProposal:
    text: str
    ciphers: tuple[Cipher, ...]
    #: Groups for PFS on CHILD_SA rekeying; empty means no PFS.
    groups: tuple[KeId, ...]
    #: Acceptable extended-sequence-number settings, True meaning ESN on.
    esn: tuple[bool, ...]


def _tokens(text: object, kind: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise ProposalError("", f"{kind} proposal must be a non-empty string")
    if len(text) > MAX_PROPOSAL_LENGTH:
        raise ProposalError("", f"{kind} proposal longer than {MAX_PROPOSAL_LENGTH} characters")
    return text.lower().split("-")


def _unknown(token: str, kind: str) -> ProposalError:
    supported = sorted({*CIPHERS, *PRFS, *GROUPS}) + ["ke<N>_mlkem768", "esn", "noesn"]
    return ProposalError("", f"unsupported {kind} algorithm {token!r}; supported: {', '.join(supported)}")


def _append_unique(items: list, item: object, token: str) -> None:
    if item in items:
        raise ProposalError("", f"algorithm {token!r} listed twice")
    items.append(item)


def _parse_addke(token: str) -> tuple[int, KeId] | None:
    head, sep, name = token.partition("_")
    if not sep or not head.startswith("ke") or not head[2:].isdigit():
        return None
    slot = int(head[2:])
    if not 1 <= slot <= MAX_ADDKE_SLOT or name not in ADDITIONAL_KES:
        return None
    return slot, ADDITIONAL_KES[name]


def parse_ike(text: object) -> IkeProposal:
    """Parse and check an IKE proposal string; raises ProposalError."""
    if isinstance(text, str):
        return _parse_ike_cached(text)
    return _parse_ike(text)


def parse_esp(text: object) -> EspProposal:
    """Parse and check an ESP proposal string; raises ProposalError."""
    if isinstance(text, str):
        return _parse_esp_cached(text)
    return _parse_esp(text)


def _parse_ike(text: object) -> IkeProposal:
    ciphers: list[Cipher] = []
    prfs: list[PrfId] = []
    groups: list[KeId] = []
    additional: dict[int, list[KeId]] = {}
    for token in _tokens(text, "IKE"):
        if token in CIPHERS:
            _append_unique(ciphers, CIPHERS[token], token)
        elif token in PRFS:
            _append_unique(prfs, PRFS[token], token)
        elif token in GROUPS:
            _append_unique(groups, GROUPS[token], token)
        elif (addke := _parse_addke(token)) is not None:
            _append_unique(additional.setdefault(addke[0], []), addke[1], token)
        else:
            raise _unknown(token, "IKE")
    if not ciphers or not prfs or not groups:
        raise ProposalError("", f"IKE proposal {text!r} needs a cipher, a PRF and a key-exchange group")
    slots = sorted(additional)
    if slots != list(range(1, len(slots) + 1)):
        raise ProposalError("", f"IKE proposal {text!r}: additional key exchanges must use ke1, ke2, ... in order")
    return IkeProposal(
        text=str(text).lower(),
        ciphers=tuple(ciphers),
        prfs=tuple(prfs),
        groups=tuple(groups),
        additional=tuple((slot, tuple(additional[slot])) for slot in slots),
    )


def _parse_esp(text: object) -> EspProposal:
    ciphers: list[Cipher] = []
    groups: list[KeId] = []
    esn: list[bool] = []
    for token in _tokens(text, "ESP"):
        if token in CIPHERS:
            _append_unique(ciphers, CIPHERS[token], token)
        elif token in GROUPS:
            _append_unique(groups, GROUPS[token], token)
        elif token in ("esn", "noesn"):
            _append_unique(esn, token == "esn", token)
        else:
            raise _unknown(token, "ESP")
    if not ciphers:
        raise ProposalError("", f"ESP proposal {text!r} needs a cipher")
    return EspProposal(
        text=str(text).lower(),
        ciphers=tuple(ciphers),
        groups=tuple(groups),
        esn=tuple(esn) or (False,),
    )


def proposal_list(value: object, path: str, parse: Callable[[object], IkeProposal | EspProposal]) -> tuple[str, ...]:
    """A list of 1..8 proposal strings, each checked by `parse`, errors naming the item's path."""
    def one(item: object, item_path: str) -> str:
        try:
            return parse(item).text
        except ProposalError as exc:
            raise ProposalError(item_path, str(exc)) from None

    return fields.array(value, path, one, 8, 1)


# Peer maps repeat the same few strings thousands of times; parse each once.
_parse_ike_cached = functools.lru_cache(maxsize=256)(_parse_ike)
_parse_esp_cached = functools.lru_cache(maxsize=256)(_parse_esp)
