"""What an open netlink channel costs the sidecar in private memory (issue 14: a pod's sidecar keeps three
open with the XFRM data plane). The receive buffer is 128 KiB so that no dump's datagram is ever cut
short; only the pages a datagram really wrote may count."""

from __future__ import annotations

import gc

import pytest

from ipsec_mesh.xfrm.channel import RECV_BUFFER, NetlinkChannel
from tests.support.netns import make_pair, missing_prerequisite

pytestmark = pytest.mark.skipif(missing_prerequisite() is not None, reason=str(missing_prerequisite()))

CHANNELS = 16


def rss_anon() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.fixture
def pair():
    namespaces = make_pair("nlm")
    yield namespaces
    namespaces.close()


def test_open_channels_hold_only_the_pages_their_replies_wrote(pair):
    gc.collect()
    before = rss_anon()
    channels = [NetlinkChannel(pair.a) for _ in range(CHANNELS)]
    try:
        for channel in channels:  # a reply each: a dump of the (empty) SA table, then its NLMSG_DONE
            assert channel.dump(b"", 0x12, "dump_sas") == []  # XFRM_MSG_GETSA
        grown = rss_anon() - before
    finally:
        for channel in channels:
            channel.close()
    # Before: each channel zero-filled its whole buffer (16 x 128 KiB = 2 MiB resident).
    assert grown < CHANNELS * RECV_BUFFER // 8, grown

