"""Proposals: strongSwan-style proposal strings, SA payload proposals, and selection.

A proposal string names one transform per token, e.g.
``aes256gcm16-prfsha256-x25519-ke1_mlkem768`` (IKE) or ``aes256gcm16-esn`` (ESP).
Several tokens of one type form a choice (``aes256gcm16-aes128gcm16-...``). Only what
RFC 8247/8221 allow and what this implementation supports can be named: AEAD
ciphers only (so no INTEG transform is ever offered or accepted).
"""

from __future__ import annotations

import functools
from dataclasses import field, replace

from ..records import record
from .constants import (
    AEAD_ENCR,
    EncrId,
    EsnId,
    KeId,
    PrfId,
    ProtocolId,
    TransformType,
)
from .errors import NoProposalChosen
from .payloads import Proposal, Transform
from .wire import MISSING, recall_pair, remember, remember_pair

ENCR_NAMES: dict[str, tuple[EncrId, int | None]] = {
    "aes128gcm16": (EncrId.AES_GCM_16, 128),
    "aes256gcm16": (EncrId.AES_GCM_16, 256),
    "aes128gcm": (EncrId.AES_GCM_16, 128),
    "aes256gcm": (EncrId.AES_GCM_16, 256),
    "chacha20poly1305": (EncrId.CHACHA20_POLY1305, None),
}
PRF_NAMES: dict[str, PrfId] = {
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}
KE_NAMES: dict[str, KeId] = {
    "modp2048": KeId.MODP_2048,
    "modp3072": KeId.MODP_3072,
    "modp4096": KeId.MODP_4096,
    "ecp256": KeId.ECP_256,
    "ecp384": KeId.ECP_384,
    "ecp521": KeId.ECP_521,
    "x25519": KeId.CURVE25519,
    "curve25519": KeId.CURVE25519,
    "mlkem512": KeId.ML_KEM_512,
    "mlkem768": KeId.ML_KEM_768,
    "mlkem1024": KeId.ML_KEM_1024,
    "none": KeId.NONE,
}
ESN_NAMES: dict[str, EsnId] = {"esn": EsnId.ESN, "noesn": EsnId.NO_ESN}

ADDKE_TYPES = tuple(TransformType(t) for t in range(TransformType.ADDKE1, TransformType.ADDKE7 + 1))

# Names for logs and status output (inverse of the tables above, first name wins).
# Keyed by plain ints too: peers send numbers, not our enums.
ENCR_LABEL: dict[tuple[int, int | None], str] = {v: k for k, v in reversed(list(ENCR_NAMES.items()))}
PRF_LABEL: dict[int, str] = {v: k for k, v in reversed(list(PRF_NAMES.items()))}
KE_LABEL: dict[int, str] = {v: k for k, v in reversed(list(KE_NAMES.items()))}


class ProposalSyntaxError(ValueError):
    """A proposal string names something unknown or unsupported."""


Encr = tuple[int, int | None]  # (EncrId, key bits or None)


@record(frozen=True)
class ProposalSpec:
    """One configured proposal: per transform type, the acceptable choices in preference order.

    For IKE: encr, prf and ke are required. For ESP: encr required, prf empty, ke empty
    unless PFS is wanted, esn defaults to (ESN, NO_ESN): ESN preferred.
    `addke[i]` lists the choices for ADDKE(i+1); a NONE entry makes it optional.
    """

    protocol: ProtocolId
    encr: tuple[Encr, ...]
    prf: tuple[int, ...] = ()
    ke: tuple[int, ...] = ()
    esn: tuple[int, ...] = ()
    addke: tuple[tuple[int, ...], ...] = ()

    def choices(self) -> dict[int, tuple[int, ...]]:
        """Per transform type but ENCR (see `encr`) the acceptable values; absent types mean
        'must be absent or NONE'."""
        table: dict[int, tuple[int, ...]] = {}
        if self.prf:
            table[TransformType.PRF] = self.prf
        if self.ke:
            table[TransformType.KE] = self.ke
        if self.esn:
            table[TransformType.ESN] = self.esn
        for i, ids in enumerate(self.addke):
            if ids:
                table[ADDKE_TYPES[i]] = ids
        return table

    def to_payload(self, number: int, spi: bytes = b"") -> Proposal:
        transforms: list[Transform] = []
        for encr_id, bits in self.encr:
            transforms.append(Transform(TransformType.ENCR, encr_id, bits))
        transforms += [Transform(TransformType.PRF, p) for p in self.prf]
        transforms += [Transform(TransformType.KE, k) for k in self.ke]
        transforms += [Transform(TransformType.ESN, e) for e in self.esn]
        for i, ids in enumerate(self.addke):
            transforms += [Transform(ADDKE_TYPES[i], k) for k in ids]
        return Proposal(number, self.protocol, spi, tuple(transforms))

    def without_ke(self) -> "ProposalSpec":
        """The ESP proposal as sent in IKE_AUTH, where no key exchange happens."""
        return ProposalSpec(self.protocol, self.encr, self.prf, (), self.esn, ())

    @staticmethod
    @functools.lru_cache(maxsize=64)  # keyed by our own configuration's proposals
    def all_without_ke(specs: tuple["ProposalSpec", ...]) -> tuple["ProposalSpec", ...]:
        """`without_ke` of each, computed once per configured tuple (every IKE_AUTH asks)."""
        return tuple(spec.without_ke() for spec in specs)

    def __str__(self) -> str:
        parts = [ENCR_LABEL.get(e, f"encr{e[0]}") for e in self.encr]
        parts += [PRF_LABEL.get(p, f"prf{p}") for p in self.prf]
        parts += [KE_LABEL.get(k, f"ke{k}") for k in self.ke]
        for i, ids in enumerate(self.addke):
            parts += [f"ke{i + 1}_{KE_LABEL.get(k, k)}" for k in ids]
        if self.esn:
            parts += ["esn" if e == EsnId.ESN else "noesn" for e in self.esn]
        return "-".join(parts)


def parse_proposal(text: str, protocol: ProtocolId) -> ProposalSpec:
    """Parse 'aes256gcm16-prfsha256-x25519-ke1_mlkem768' (IKE) or 'aes256gcm16-esn' (ESP)."""
    encr: list[Encr] = []
    prf: list[int] = []
    ke: list[int] = []
    esn: list[int] = []
    addke: list[list[int]] = [[] for _ in ADDKE_TYPES]
    for token in text.strip().lower().split("-"):
        if token in ENCR_NAMES:
            encr.append(ENCR_NAMES[token])
        elif token in PRF_NAMES:
            prf.append(PRF_NAMES[token])
        elif token in ESN_NAMES:
            esn.append(ESN_NAMES[token])
        elif token in KE_NAMES and token != "none":
            ke.append(KE_NAMES[token])
        elif token.startswith("ke") and "_" in token and token[2:token.index("_")].isdigit():
            index = int(token[2:token.index("_")])
            name = token[token.index("_") + 1:]
            if not 1 <= index <= len(ADDKE_TYPES) or name not in KE_NAMES:
                raise ProposalSyntaxError(f"unknown additional key exchange {token!r}")
            addke[index - 1].append(KE_NAMES[name])
        else:
            raise ProposalSyntaxError(f"unknown or unsupported algorithm {token!r} in {text!r}")
    if not encr:
        raise ProposalSyntaxError(f"{text!r} names no AEAD cipher (aes128gcm16, aes256gcm16, chacha20poly1305)")
    if protocol == ProtocolId.IKE:
        if not prf:
            raise ProposalSyntaxError(f"{text!r} names no PRF (prfsha256, prfsha384, prfsha512)")
        if not ke:
            raise ProposalSyntaxError(f"{text!r} names no key exchange (e.g. x25519)")
        if esn:
            raise ProposalSyntaxError(f"{text!r}: esn/noesn apply to ESP proposals only")
    else:
        if prf:
            raise ProposalSyntaxError(f"{text!r}: ESP proposals take no PRF")
        if not esn:
            esn = [EsnId.ESN, EsnId.NO_ESN]
    while addke and not addke[-1]:
        addke.pop()
    return ProposalSpec(protocol, tuple(encr), tuple(prf), tuple(ke), tuple(esn),
                        tuple(tuple(a) for a in addke))


#: X25519 plus ML-KEM-768 (RFC 9370 ADDKE1): the first proposal of the engine and of the mesh.
HYBRID_IKE = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"


def engine_default_ike_proposals() -> list[ProposalSpec]:
    """The engine's own defaults (broad; the mesh's narrower ones are `meshapi.proposals`):
    the ML-KEM-768 hybrid first, then classic choices for peers without RFC 9370."""
    return [
        parse_proposal(HYBRID_IKE, ProtocolId.IKE),
        parse_proposal("aes256gcm16-aes128gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512"
                       "-x25519-ecp256-ecp384-modp2048", ProtocolId.IKE),
    ]


def engine_default_esp_proposals() -> list[ProposalSpec]:
    return [parse_proposal("aes256gcm16-aes128gcm16-chacha20poly1305-esn-noesn", ProtocolId.ESP)]


@record(frozen=True)
class Selected:
    """The outcome of proposal selection: one value per transform type."""

    protocol: ProtocolId
    encr: int
    key_bits: int | None
    prf: int | None = None
    ke: int = KeId.NONE
    esn: bool = False
    addke: tuple[int, ...] = ()  # per ADDKE slot; NONE where skipped
    number: int = 1  # the proposal number we answer with
    spi: bytes = b""  # the peer's SPI from the chosen proposal
    # `shape` of a selection that select() placed (set there, never by replace(), which
    # leaves it None): the shape is then the memoised object, not a copy per call.
    _shape: "Selected | None" = field(default=None, init=False, repr=False, compare=False)

    @property
    def additional_kes(self) -> tuple[int, ...]:
        """The additional key exchanges to run, in order, NONE slots left out."""
        if not self.addke:  # most selections: no generator to run (asked twice per IKE SA)
            return ()
        return tuple(k for k in self.addke if k != KeId.NONE)

    def to_payload(self, spi: bytes) -> Proposal:
        """The single-transform-per-type proposal to answer with."""
        return Proposal(self.number, self.protocol, spi, self.shape._answer)

    @property
    def shape(self) -> "Selected":
        """This selection without the per-message fields (proposal number, SPI)."""
        if self._shape is not None:
            return self._shape
        return replace(self, number=1, spi=b"") if self.number != 1 or self.spi else self

    # Computed once per object: a shape is memoised by select() and serves every IKE SA
    # whose peer makes the same offer (a frozen dataclass keeps these in its __dict__).
    @functools.cached_property
    def _answer(self) -> tuple[Transform, ...]:
        return self.transforms()

    @functools.cached_property
    def _label(self) -> str:
        return self.label()

    def transforms(self) -> tuple[Transform, ...]:
        """One transform per negotiated type (to_payload's, without the memo)."""
        ts = [Transform(TransformType.ENCR, self.encr, self.key_bits)]
        if self.prf is not None:
            ts.append(Transform(TransformType.PRF, self.prf))
        if self.ke != KeId.NONE or self.protocol == ProtocolId.IKE:
            ts.append(Transform(TransformType.KE, self.ke))
        if self.protocol != ProtocolId.IKE:
            ts.append(Transform(TransformType.ESN, EsnId.ESN if self.esn else EsnId.NO_ESN))
        for i, k in enumerate(self.addke):
            ts.append(Transform(ADDKE_TYPES[i], k))
        return tuple(ts)

    def describe(self) -> str:
        return self.shape._label

    def label(self) -> str:
        """describe() without the memo."""
        parts = [ENCR_LABEL.get((self.encr, self.key_bits), f"encr{self.encr}")]
        if self.prf is not None:
            parts.append(PRF_LABEL.get(self.prf, f"prf{self.prf}"))
        if self.ke != KeId.NONE:
            parts.append(KE_LABEL.get(self.ke, f"ke{self.ke}"))
        parts += [f"ke{i + 1}_{KE_LABEL.get(k, k)}" for i, k in enumerate(self.addke) if k != KeId.NONE]
        if self.protocol != ProtocolId.IKE:
            parts.append("esn" if self.esn else "noesn")
        return "-".join(parts)


_KNOWN_TYPES = frozenset(TransformType)


def _offered_values(proposal: Proposal) -> tuple[set[Encr], dict[int, set[int]]] | None:
    """The ciphers (id, key bits) of an offer and its other transform ids per type; None if
    it has a type we do not know (RFC 7296 §3.3.6)."""
    ciphers: set[Encr] = set()
    offered: dict[int, set[int]] = {}
    for t in proposal.transforms:
        if t.type not in _KNOWN_TYPES:
            return None
        if t.type == TransformType.ENCR:
            ciphers.add((t.id, t.key_length))
        else:
            offered.setdefault(t.type, set()).add(t.id)
    return ciphers, offered


def _match(ours: ProposalSpec, offer: Proposal) -> Selected | None:
    if offer.protocol != ours.protocol:
        return None
    # The choice depends only on our spec and the offered transforms (both immutable):
    # peers offer the same ones in every IKE SA, so it is computed once per combination.
    # First by identity: hashing the records (a Python-level __hash__ per transform) cost
    # more than the rest of the lookup. The decoder hands out one tuple per distinct
    # transform bytes (payload_codec._TRANSFORM_LISTS) and our spec lives in the config, so
    # a repeated offer finds its entry there (wire.recall_pair). An equal offer in other
    # objects finds the same choice by value.
    transforms = offer.transforms
    choice: Selected | None = recall_pair(_CHOICES_BY_ID, ours, transforms)
    if choice is MISSING:
        key = (ours, transforms)
        try:
            choice = _CHOICES[key]
        except KeyError:
            choice = _choose(ours, offer)
            remember(_CHOICES, key, choice)
        remember_pair(_CHOICES_BY_ID, ours, transforms, choice)
    if choice is None:
        return None
    if offer.number == 1 and not offer.spi:
        return choice  # already this offer's number and SPI (IKE_SA_INIT)
    # The memoised choice is a shape; this answer is it with the offer's own number and SPI
    # (built directly: dataclasses.replace costs twice as much on this path).
    placed = Selected(choice.protocol, choice.encr, choice.key_bits, choice.prf, choice.ke, choice.esn,
                      choice.addke, offer.number, offer.spi)
    object.__setattr__(placed, "_shape", choice)
    return placed


_CHOICES: dict[tuple[ProposalSpec, tuple[Transform, ...]], Selected | None] = {}
_CHOICES_BY_ID: dict[tuple[int, int], tuple[ProposalSpec, tuple[Transform, ...], Selected | None]] = {}


def _choose(ours: ProposalSpec, offer: Proposal) -> Selected | None:
    values = _offered_values(offer)
    if values is None:
        return None
    ciphers, offered = values
    # An INTEG transform other than NONE cannot go with the AEAD ciphers we use.
    if offered.pop(TransformType.INTEG, {0}) - {0}:
        return None
    encr = next((e for e in ours.encr if e in ciphers), None)
    if encr is None:
        return None
    wanted = ours.choices()
    chosen: dict[int, int] = {}
    for ttype in set(offered) | set(wanted):
        ids = offered.get(ttype, {KeId.NONE})
        for candidate in wanted.get(ttype, (KeId.NONE,)):
            if candidate in ids:
                chosen[ttype] = candidate
                break
        else:
            return None
    encr_id, bits = encr
    if encr_id not in AEAD_ENCR:
        return None
    # Keep a slot when it was offered (the answer then names its choice, NONE included).
    last = max((i + 1 for i, t in enumerate(ADDKE_TYPES) if t in offered or t in wanted), default=0)
    addke = tuple(chosen.get(t, KeId.NONE) for t in ADDKE_TYPES[:last])
    return Selected(
        protocol=ours.protocol,
        encr=encr_id,
        key_bits=bits,
        prf=chosen.get(TransformType.PRF),
        ke=chosen.get(TransformType.KE, KeId.NONE),
        esn=chosen.get(TransformType.ESN, EsnId.NO_ESN) == EsnId.ESN,
        addke=addke,
    )


def select(offers: list[Proposal], ours: list[ProposalSpec]) -> Selected:
    """Pick the first of OUR proposals (our preference order) that one of the offers satisfies."""
    for spec in ours:
        for offer in offers:
            selected = _match(spec, offer)
            if selected is not None:
                return selected
    raise NoProposalChosen(
        "no common proposal: peer offered "
        + "; ".join(describe_offer(o) for o in offers[:8])
        + " / we accept " + "; ".join(str(s) for s in ours)
    )


def check_answer(answer: Proposal, offered: list[ProposalSpec]) -> Selected:
    """Validate the responder's chosen proposal against what we offered (initiator side).

    The answer must carry exactly one transform per type and match one of our offers.
    """
    per_type: dict[int, int] = {}
    for t in answer.transforms:
        per_type[t.type] = per_type.get(t.type, 0) + 1
    if any(n != 1 for n in per_type.values()):
        raise NoProposalChosen("responder answered with more than one transform of a type")
    selected = select([answer], offered)
    return selected


def describe_offer(p: Proposal) -> str:
    names = []
    for t in p.transforms:
        if t.type == TransformType.ENCR:
            names.append(ENCR_LABEL.get((t.id, t.key_length), f"encr{t.id}/{t.key_length}"))
        elif t.type == TransformType.PRF:
            names.append(PRF_LABEL.get(t.id, f"prf{t.id}"))
        elif t.type == TransformType.KE:
            names.append(KE_LABEL.get(t.id, f"ke{t.id}"))
        elif t.type == TransformType.INTEG:
            names.append(f"integ{t.id}")
        elif t.type == TransformType.ESN:
            names.append("esn" if t.id == EsnId.ESN else "noesn")
        else:
            names.append(f"t{int(t.type)}:{t.id}")
    # The codec keeps a protocol number it does not know as a bare int.
    protocol = p.protocol.name if isinstance(p.protocol, ProtocolId) else str(p.protocol)
    return f"#{p.number} {protocol}:" + "-".join(names)


__all__ = [
    "ProposalSpec", "ProposalSyntaxError", "Selected", "parse_proposal", "select",
    "check_answer", "describe_offer", "engine_default_ike_proposals", "engine_default_esp_proposals", "HYBRID_IKE",
    "ENCR_NAMES", "PRF_NAMES", "KE_NAMES",
]
