"""What one peer-map answer costs the operator on the wire: one TLS record write, not one for the
headers and another for the body (at 10,000 watchers each write is a TLS record and a send())."""

from __future__ import annotations

from asyncio import sslproto

from ipsec_mesh.meshapi import PeerMap
from tests.operator.test_api_hostile import get, raw_request, token_of
from tests.support.standalone_fixture import running


async def test_a_peer_map_answer_is_one_write_of_headers_and_body(tmp_path, monkeypatch):
    writes: list[bytes] = []
    original = sslproto._SSLProtocolTransport.write

    def counted(self, data):
        if self._ssl_protocol._server_side:
            writes.append(bytes(data))
        return original(self, data)

    monkeypatch.setattr(sslproto._SSLProtocolTransport, "write", counted)
    async with running(tmp_path) as operator:
        status, body = await raw_request(operator, get("/v1/peermap?version=0&wait=0", token_of(operator)))
        assert status == 200
        assert PeerMap.from_json(body) == operator.runtime.index.peer_map(("shop", "web"))
        assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(body)
