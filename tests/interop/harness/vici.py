"""A small client for strongSwan's vici protocol (charon's control socket).

Written from the protocol description in strongSwan's vici plugin README: every
packet is a 32-bit big-endian length, a packet type, an optional name and a message
made of sections, key/value pairs and lists. Values come back as ``str`` (decoded
UTF-8 with replacement) so test assertions stay simple.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Any, Iterator

# Packet types.
CMD_REQUEST, CMD_RESPONSE, CMD_UNKNOWN = 0, 1, 2
EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, EVENT_UNKNOWN, EVENT = 3, 4, 5, 6, 7
_NAMED = {CMD_REQUEST, EVENT_REGISTER, EVENT_UNREGISTER, EVENT}
# Message element types.
SECTION_START, SECTION_END, KEY_VALUE, LIST_START, LIST_ITEM, LIST_END = 1, 2, 3, 4, 5, 6

MAX_PACKET = 512 * 1024

Message = dict[str, Any]


class ViciError(RuntimeError):
    """Protocol violation, unknown command, or a command answering success=no."""


def encode(message: Message) -> bytes:
    """Encode a dict: nested dicts become sections, lists become vici lists."""
    out = bytearray()
    for key, value in message.items():
        name = _short(key)
        if isinstance(value, dict):
            out += bytes([SECTION_START]) + name + encode(value) + bytes([SECTION_END])
        elif isinstance(value, (list, tuple)):
            out += bytes([LIST_START]) + name
            for item in value:
                out += bytes([LIST_ITEM]) + _value(item)
            out += bytes([LIST_END])
        else:
            out += bytes([KEY_VALUE]) + name + _value(value)
    return bytes(out)


def _short(name: str) -> bytes:
    raw = name.encode()
    if len(raw) > 255:
        raise ViciError(f"vici name too long: {name[:40]}...")
    return bytes([len(raw)]) + raw


def _value(value: Any) -> bytes:
    if isinstance(value, bool):
        value = "yes" if value else "no"
    raw = value if isinstance(value, bytes) else str(value).encode()
    if len(raw) > 0xFFFF:
        raise ViciError("vici value longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ViciError(f"truncated vici message at offset {self.pos} (+{n})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def name(self) -> str:
        return self.take(self.byte()).decode("utf-8", "replace")

    def value(self) -> str:
        (length,) = struct.unpack("!H", self.take(2))
        return self.take(length).decode("utf-8", "replace")

    def done(self) -> bool:
        return self.pos >= len(self.data)


def decode(data: bytes) -> Message:
    """Decode a vici message into nested dicts and lists of str."""
    reader = _Reader(data)
    root: Message = {}
    stack: list[Message] = [root]
    current_list: list[str] | None = None
    while not reader.done():
        kind = reader.byte()
        if current_list is not None and kind not in (LIST_ITEM, LIST_END):
            raise ViciError(f"element {kind} inside a list")
        if kind == SECTION_START:
            section: Message = {}
            stack[-1][reader.name()] = section
            stack.append(section)
        elif kind == SECTION_END:
            if len(stack) == 1:
                raise ViciError("section end without section start")
            stack.pop()
        elif kind == KEY_VALUE:
            key = reader.name()
            stack[-1][key] = reader.value()
        elif kind == LIST_START:
            current_list = []
            stack[-1][reader.name()] = current_list
        elif kind == LIST_ITEM:
            if current_list is None:
                raise ViciError("list item outside a list")
            current_list.append(reader.value())
        elif kind == LIST_END:
            if current_list is None:
                raise ViciError("list end outside a list")
            current_list = None
        else:
            raise ViciError(f"unknown vici element type {kind}")
    if len(stack) != 1 or current_list is not None:
        raise ViciError("unterminated section or list")
    return root


class ViciSession:
    """One connection to a vici socket; commands are synchronous with a deadline."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "ViciSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- framing -------------------------------------------------------
    def _send(self, ptype: int, name: str | None = None, message: Message | None = None) -> None:
        body = bytes([ptype])
        if name is not None:
            body += _short(name)
        if message is not None:
            body += encode(message)
        self.sock.sendall(struct.pack("!I", len(body)) + body)

    def _recv_exact(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            chunk = self.sock.recv(n - len(chunks))
            if not chunk:
                raise ViciError("vici socket closed by charon")
            chunks += chunk
        return bytes(chunks)

    def _recv(self) -> tuple[int, str | None, Message]:
        (length,) = struct.unpack("!I", self._recv_exact(4))
        if not 1 <= length <= MAX_PACKET:
            raise ViciError(f"bad vici packet length {length}")
        reader = _Reader(self._recv_exact(length))
        ptype = reader.byte()
        name = reader.name() if ptype in _NAMED else None
        payload = reader.take(len(reader.data) - reader.pos)
        message = decode(payload) if ptype in (CMD_RESPONSE, EVENT) else {}
        return ptype, name, message

    # --- commands and events ------------------------------------------------
    def request(self, command: str, message: Message | None = None,
                check: bool = True) -> Message:
        """Send a command, return its response; raise on success=no when check."""
        response, _ = self.streamed(command, None, message, check=check)
        return response

    def streamed(self, command: str, event: str | None, message: Message | None = None,
                 check: bool = True) -> tuple[Message, list[Message]]:
        """A command that emits ``event`` messages before its response (list-sas...)."""
        if event:
            self._register(EVENT_REGISTER, event)
        try:
            self._send(CMD_REQUEST, command, message or {})
            events: list[Message] = []
            while True:
                ptype, name, reply = self._recv()
                if ptype == EVENT and name == event:
                    events.append(reply)
                elif ptype == CMD_RESPONSE:
                    break
                elif ptype == CMD_UNKNOWN:
                    raise ViciError(f"charon does not know vici command {command!r}")
                elif ptype != EVENT:
                    raise ViciError(f"unexpected vici packet type {ptype} for {command}")
        finally:
            if event:
                self._register(EVENT_UNREGISTER, event)
        if check and reply.get("success", "yes") != "yes":
            raise ViciError(f"{command} failed: {reply.get('errmsg', reply)}")
        return reply, events

    def _register(self, ptype: int, event: str) -> None:
        self._send(ptype, event)
        while True:
            answer, _, _ = self._recv()
            if answer == EVENT_CONFIRM:
                return
            if answer == EVENT_UNKNOWN:
                raise ViciError(f"charon does not know vici event {event!r}")
            if answer != EVENT:  # events of an earlier registration may still arrive
                raise ViciError(f"unexpected vici packet type {answer} on (un)register")

    def subscribe(self, *events: str) -> None:
        """Register for events (ike-updown, child-updown, ike-rekey, child-rekey...)."""
        for event in events:
            self._register(EVENT_REGISTER, event)

    def events(self, timeout: float) -> Iterator[tuple[str, Message]]:
        """Yield (event name, message) of subscribed events until ``timeout`` elapses."""
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    ptype, name, message = self._recv()
                except socket.timeout:
                    return
                if ptype == EVENT and name is not None:
                    yield name, message
        finally:
            self.sock.settimeout(self.timeout)
