"""Proposal strings as a peer map or an IPsecPeering may name them.

The syntax is the IKE engine's (`ike.proposals.parse_proposal`: strongSwan-style,
``aes256gcm16-prfsha256-x25519-ke1_mlkem768`` for IKE, ``aes256gcm16-esn`` for
ESP). The mesh accepts a narrower set than the engine can speak: the algorithms
below, each named once, additional key exchanges in order from ke1. Anything
else is refused here, with a message a person can act on, before it reaches a
sidecar: no CBC, no SHA-1, no MODP below 2048.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ipsec_mesh.ike import (
    ENCR_NAMES,
    KE_NAMES,
    PRF_NAMES,
    KeId,
    ProposalSpec,
    ProposalSyntaxError,
    ProtocolId,
    parse_proposal,
)
from ipsec_mesh.ike.proposals import HYBRID_IKE

from . import fields
from .errors import ProposalError

# What a peering offers unless it names its own (the engine's broader defaults are
# `ike.proposals.engine_default_*`).
MESH_DEFAULT_IKE = HYBRID_IKE
# Offered after the hybrid one: a peer without RFC 9370 must refuse a proposal whose
# transform types it does not know, so the classic proposal is what lets it agree.
MESH_DEFAULT_IKE_CLASSIC = "aes256gcm16-prfsha256-x25519"
MESH_DEFAULT_IKE_PROPOSALS = (MESH_DEFAULT_IKE, MESH_DEFAULT_IKE_CLASSIC)
MESH_DEFAULT_ESP = "aes256gcm16-esn"

MAX_PROPOSAL_LENGTH = 128

MESH_CIPHERS = ("aes128gcm16", "aes256gcm16", "chacha20poly1305")
MESH_PRFS = ("prfsha256", "prfsha384", "prfsha512")
MESH_GROUPS = ("x25519", "curve25519", "ecp256", "ecp384", "modp2048")
MESH_ADDITIONAL = ("mlkem768",)  # RFC 9370 ADDKE1..7

_ALLOWED_ENCR = {ENCR_NAMES[name] for name in MESH_CIPHERS}
_ALLOWED_PRF = {PRF_NAMES[name] for name in MESH_PRFS}
_ALLOWED_KE = {KE_NAMES[name] for name in MESH_GROUPS}
_ALLOWED_ADDKE = {KE_NAMES[name] for name in MESH_ADDITIONAL} | {KeId.NONE}
SUPPORTED = (*MESH_CIPHERS, *MESH_PRFS, *MESH_GROUPS, *(f"ke<N>_{n}" for n in MESH_ADDITIONAL), "esn", "noesn")


def parse_ike(text: object) -> ProposalSpec:
    """Parse and check an IKE proposal string; raises ProposalError."""
    return _parse_cached(_checked_text(text, "IKE"), ProtocolId.IKE)


def parse_esp(text: object) -> ProposalSpec:
    """Parse and check an ESP proposal string; raises ProposalError."""
    return _parse_cached(_checked_text(text, "ESP"), ProtocolId.ESP)


def _checked_text(text: object, kind: str) -> str:
    if not isinstance(text, str) or not text.strip("- "):
        raise ProposalError("", f"{kind} proposal must be a non-empty string")
    if len(text) > MAX_PROPOSAL_LENGTH:
        raise ProposalError("", f"{kind} proposal longer than {MAX_PROPOSAL_LENGTH} characters")
    return text.lower()


# Peer maps repeat the same few strings thousands of times; parse each once.
@functools.lru_cache(maxsize=256)
def _parse_cached(text: str, protocol: ProtocolId) -> ProposalSpec:
    kind = "IKE" if protocol == ProtocolId.IKE else "ESP"
    try:
        spec = parse_proposal(text, protocol)
    except ProposalSyntaxError as exc:
        raise ProposalError("", f"{kind} proposal: {exc}; supported: {', '.join(SUPPORTED)}") from None
    outside = ([e for e in spec.encr if e not in _ALLOWED_ENCR] + [p for p in spec.prf if p not in _ALLOWED_PRF]
               + [k for k in spec.ke if k not in _ALLOWED_KE]
               + [k for slot in spec.addke for k in slot if k not in _ALLOWED_ADDKE])
    if outside:
        raise ProposalError("", f"{kind} proposal {text!r} names algorithms the mesh does not allow;"
                                f" supported: {', '.join(SUPPORTED)}")
    # The engine folds aliases (x25519/curve25519) into one ID, so a repeat shows up here.
    for choices in (spec.encr, spec.prf, spec.ke, spec.esn if protocol == ProtocolId.ESP else (), *spec.addke):
        if len(set(choices)) != len(choices):
            raise ProposalError("", f"{kind} proposal {text!r} lists an algorithm twice")
    if any(not slot for slot in spec.addke):
        raise ProposalError("", f"{kind} proposal {text!r}: additional key exchanges must use ke1, ke2, ... in order")
    return spec


def proposal_list(value: object, path: str, parse: Callable[[object], ProposalSpec]) -> tuple[str, ...]:
    """A list of 1..8 proposal strings, each checked by `parse`, errors naming the item's path."""
    def one(item: object, item_path: str) -> str:
        try:
            parse(item)
        except ProposalError as exc:
            raise ProposalError(item_path, str(exc)) from None
        return str(item).lower()

    return fields.array(value, path, one, 8, 1)
