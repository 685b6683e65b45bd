"""IKEv2 message fragmentation (RFC 7383), sans-IO.

A protected message too big for the path is split after encoding its inner
payload chain: every piece becomes one datagram with one SKF payload, each
sealed on its own, so each fragment is authenticated on arrival before it is
stored. The first inner payload type travels only in fragment 1.
"""

from __future__ import annotations

from dataclasses import field

from ..records import record
from . import payloads as p
from .constants import IKE_HEADER_LEN, PayloadType
from .errors import FragmentError, ParseError
from .message import Protector, encode, encode_chain, open_payload, seal_payload, with_inner
from .wire import u16

SKF_HEADER_LEN = 8  # generic header + fragment number + total fragments
MAX_TOTAL_FRAGMENTS = 0xFFFF


def fragment_overhead(protector: Protector) -> int:
    """Bytes of each fragment datagram that are not inner payload data."""
    return IKE_HEADER_LEN + SKF_HEADER_LEN + protector.iv_len + protector.icv_len + 1  # + pad length


def encode_fragments(msg: p.Message, protector: Protector, max_datagram: int) -> list[bytes]:
    """`msg` as SKF datagrams of at most `max_datagram` bytes each (IKE message size:
    the caller subtracts IP and UDP headers and the non-ESP marker)."""
    room = max_datagram - fragment_overhead(protector)
    if room < 1:
        raise ValueError(f"max_datagram {max_datagram} leaves no room for fragment data")
    first_inner, chain = encode_chain(msg.payloads)
    pieces = [chain[i:i + room] for i in range(0, len(chain), room)] or [b""]
    total = len(pieces)
    if total > MAX_TOTAL_FRAGMENTS:
        raise ValueError(f"{total} fragments exceed the {MAX_TOTAL_FRAGMENTS} the field allows")
    return [
        seal_payload(msg, PayloadType.SKF, first_inner if number == 1 else PayloadType.NONE,
                     u16(number) + u16(total), piece, protector)
        for number, piece in enumerate(pieces, start=1)
    ]


def encode_protected(msg: p.Message, protector: Protector, max_datagram: int,
                     fragmentation: bool) -> list[bytes]:
    """The datagrams of a protected message: one SK datagram when it fits in `max_datagram`
    or when the peer did not announce IKEV2_FRAGMENTATION_SUPPORTED, else SKF fragments."""
    _, chain = encode_chain(msg.payloads)
    sk_size = IKE_HEADER_LEN + 4 + protector.iv_len + len(chain) + 1 + protector.icv_len
    if sk_size <= max_datagram or not fragmentation:
        return [encode(msg, protector)]
    return encode_fragments(msg, protector, max_datagram)


@record
class _Pending:
    """The verified fragments of one message seen so far."""

    total: int
    exchange: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    first_inner: int = PayloadType.NONE
    clear: list[p.Payload] = field(default_factory=list)  # clear payloads before SKF in fragment 1


class Reassembler:
    """Collects verified SKF fragments until a message is complete.

    Keyed internally by (IKE SPIs, message ID, response flag), so one instance can
    serve an IKE SA (or several); at most `max_pending` messages are held, the oldest
    is forgotten first. Memory per message is bounded by `max_total_bytes`.
    """

    def __init__(self, max_fragments: int = 32, max_total_bytes: int = 64 * 1024,
                 max_pending: int = 4):
        self.max_fragments = max_fragments
        self.max_total_bytes = max_total_bytes
        self.max_pending = max_pending
        self._pending: dict[tuple[bytes, bytes, int, bool], _Pending] = {}

    @property
    def pending(self) -> int:
        """How many messages are partly received."""
        return len(self._pending)

    def clear(self) -> None:
        self._pending.clear()

    def add(self, data: bytes, msg: p.Message, protector: Protector) -> p.Message | None:
        """Verify and store one fragment (`msg` = decode(data)); the full inner message
        once all fragments are in, else None (also for a duplicate)."""
        if not msg.payloads or not isinstance(msg.payloads[-1], p.EncryptedFragment):
            raise ParseError("message has no SKF payload")
        frag = msg.payloads[-1]
        if frag.total > self.max_fragments:
            raise FragmentError(f"{frag.total} fragments, at most {self.max_fragments}")
        piece = open_payload(data, frag.raw, protector)  # authenticated before anything is kept
        key = (msg.spi_i, msg.spi_r, msg.message_id, msg.is_response)
        state = self._state_for(key, msg, frag.total)
        if frag.number in state.pieces:
            return None
        if state.size + len(piece) > self.max_total_bytes:
            del self._pending[key]
            raise FragmentError(f"reassembled message would exceed {self.max_total_bytes} bytes")
        state.pieces[frag.number] = piece
        state.size += len(piece)
        if frag.number == 1:
            state.first_inner, state.clear = frag.first_inner, msg.payloads[:-1]
        if len(state.pieces) < state.total:
            return None
        del self._pending[key]
        content = b"".join(state.pieces[n] for n in range(1, state.total + 1))
        return with_inner(msg, state.clear, state.first_inner, content)

    def _state_for(self, key: tuple[bytes, bytes, int, bool], msg: p.Message, total: int) -> _Pending:
        state = self._pending.get(key)
        if state is not None and total < state.total:
            # RFC 7383 2.6.2: fewer fragments = left over from an older transmission.
            raise FragmentError(f"fragment says {total} fragments, earlier ones said {state.total}")
        if state is not None and msg.exchange != state.exchange:
            raise FragmentError("fragments of one message carry different exchange types")
        if state is None or total > state.total:
            # New message, or the sender re-fragmented smaller on retransmission: start over.
            self._pending.pop(key, None)
            while len(self._pending) >= self.max_pending:
                del self._pending[next(iter(self._pending))]
            state = self._pending[key] = _Pending(total, msg.exchange)
        return state
