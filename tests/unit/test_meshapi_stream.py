"""The client's reader of streamed answers (`http.FrameReader`) against hostile framing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_mesh import aio
from ipsec_mesh.meshapi.errors import MeshApiRequestError
from ipsec_mesh.meshapi.http import MAX_LINE, FrameReader, HttpProtocolError
from tests.support.loops import on  # noqa: F401 (a fixture)

MAX_FRAME = 1000


def chunked(*pieces: bytes, end: bytes = b"0\r\n\r\n") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + end


async def frames(body: bytes, max_frame: int = MAX_FRAME) -> list[bytes]:
    reader = aio.Stream(limit=MAX_LINE)
    reader.feed_data(body)
    reader.feed_eof()
    stream, found = FrameReader(reader, max_frame), []
    while (frame := await stream.next(5)) is not None:
        found.append(frame)
    return found


async def test_frames_are_lines_whatever_the_chunking():
    assert await frames(chunked(b'{"a":1}\n', b"\n", b'{"b":2}\n')) == [b'{"a":1}', b"", b'{"b":2}']
    # A proxy may re-chunk: a frame across chunks, two frames in one chunk.
    assert await frames(chunked(b'{"a"', b":1}\n{", b'"b":2}\n')) == [b'{"a":1}', b'{"b":2}']


async def test_a_frame_larger_than_the_bound_is_refused_before_it_is_all_buffered():
    with pytest.raises(HttpProtocolError, match="larger than"):
        await frames(chunked(b"x" * 600, b"x" * 600 + b"\n"))
    # The bound is the frame, not the body: many frames of a legal size are fine.
    assert len(await frames(chunked(*[b"y" * 900 + b"\n"] * 20))) == 20


def test_a_frame_is_refused_as_soon_as_it_passes_the_bound_even_if_the_chunk_says_more(on):
    async def main():
        reader = aio.Stream(limit=MAX_LINE)
        reader.feed_data(b"%x\r\n" % (1 << 40) + b"z" * (MAX_FRAME + 1))  # never fed the rest, never EOF
        with pytest.raises(HttpProtocolError, match="larger than"):
            await FrameReader(reader, MAX_FRAME).next(5)
    on(main())


@pytest.mark.parametrize("body", [
    b"zz\r\n" + b"x" * 10,                       # chunk size not hex
    b"-1\r\nx\r\n",
    b"3\r\nab\nXX0\r\n\r\n",                       # chunk data not followed by CRLF
    b"1" * 17 + b"\r\n",                           # chunk size past 16 hex digits
    b"5\r\nab\n",                                  # connection closed inside a chunk
    chunked(b"ab\ncd"),                            # the stream ends inside a frame
    b"3\r\nab\n\r\n",                              # connection closed between chunks
    b"3;" + b"e" * MAX_LINE + b"\r\nab\n\r\n",     # chunk-size line over the line bound
])
async def test_malformed_framing_raises_a_typed_error(body):
    with pytest.raises(HttpProtocolError):
        await frames(body)


def test_a_silent_stream_times_out_as_a_typed_error(on):
    async def main():
        reader = aio.Stream(limit=MAX_LINE)
        with pytest.raises(MeshApiRequestError, match="within"):
            await FrameReader(reader, MAX_FRAME).next(0.05)
    on(main())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b"5\r\nab\n\ncd\r\n", b"0\r\n\r\n"]))
def test_any_bytes_give_frames_or_a_typed_error(data, prefix):
    async def run() -> None:
        try:
            for frame in await frames(prefix + data, 64):
                assert len(frame) <= 64 and b"\n" not in frame
        except HttpProtocolError:
            pass
    aio.run(run())  # the sidecar's own loop
