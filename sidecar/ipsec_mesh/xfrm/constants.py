"""Numbers from the Linux uapi header include/uapi/linux/xfrm.h (and netlink.h, in.h, udp.h).

Only what ipsec-mesh sends or parses is listed. Values are ABI: they never change.
"""

from __future__ import annotations

import enum

NETLINK_XFRM = 6

# netlink.h
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10  # error acks do not echo our request (it may hold keys)
NETLINK_EXT_ACK = 11  # kernel explains errors ("Requested type not found")
NLMSG_HDRLEN = 16
NLA_HDRLEN = 4


class MsgType(enum.IntEnum):
    NEWSA = 0x10
    DELSA = 0x11
    GETSA = 0x12
    NEWPOLICY = 0x13
    DELPOLICY = 0x14
    GETPOLICY = 0x15
    ALLOCSPI = 0x16
    ACQUIRE = 0x17
    EXPIRE = 0x18
    UPDPOLICY = 0x19
    UPDSA = 0x1A
    POLEXPIRE = 0x1B
    FLUSHSA = 0x1C
    FLUSHPOLICY = 0x1D
    MAPPING = 0x26


class Attr(enum.IntEnum):
    """enum xfrm_attr_type_t (the NLA types in XFRM messages)."""

    UNSPEC = 0
    ALG_AUTH = 1
    ALG_CRYPT = 2
    ALG_COMP = 3
    ENCAP = 4
    TMPL = 5
    SA = 6
    POLICY = 7
    SEC_CTX = 8
    LTIME_VAL = 9
    REPLAY_VAL = 10
    REPLAY_THRESH = 11
    ETIMER_THRESH = 12
    SRCADDR = 13
    COADDR = 14
    LASTUSED = 15
    POLICY_TYPE = 16
    MIGRATE = 17
    ALG_AEAD = 18
    KMADDRESS = 19
    ALG_AUTH_TRUNC = 20
    MARK = 21
    TFCPAD = 22
    REPLAY_ESN_VAL = 23
    SA_EXTRA_FLAGS = 24
    PROTO = 25
    ADDRESS_FILTER = 26
    PAD = 27
    OFFLOAD_DEV = 28
    SET_MARK = 29  # formerly XFRMA_OUTPUT_MARK
    SET_MARK_MASK = 30
    IF_ID = 31
    MTIMER_THRESH = 32
    SA_DIR = 33


class Group(enum.IntEnum):
    """enum xfrm_nlgroups: multicast groups (joined with NETLINK_ADD_MEMBERSHIP)."""

    ACQUIRE = 1
    EXPIRE = 2  # carries both XFRM_MSG_EXPIRE and XFRM_MSG_POLEXPIRE
    SA = 3
    POLICY = 4
    AEVENTS = 5
    REPORT = 6
    MIGRATE = 7
    MAPPING = 8


class Direction(enum.IntEnum):
    IN = 0
    OUT = 1
    FWD = 2


class Action(enum.IntEnum):
    ALLOW = 0
    BLOCK = 1


class Mode(enum.IntEnum):
    TRANSPORT = 0
    TUNNEL = 1


class Level(enum.IntEnum):
    """Template level, as `ip xfrm policy ... level required|use` spells it."""

    REQUIRED = 0  # xfrm_user_tmpl.optional = 0: no SA, no traffic (fail closed)
    USE = 1  # optional = 1: use an SA if there is one, else plaintext


# xfrm_usersa_info.flags
XFRM_STATE_NOECN = 1
XFRM_STATE_DECAP_DSCP = 2
XFRM_STATE_NOPMTUDISC = 4
XFRM_STATE_WILDRECV = 8
XFRM_STATE_ICMP = 16
XFRM_STATE_AF_UNSPEC = 32
XFRM_STATE_ALIGN4 = 64
XFRM_STATE_ESN = 128

# xfrm_userpolicy_info.flags
XFRM_POLICY_LOCALOK = 1
XFRM_POLICY_ICMP = 2

XFRM_POLICY_TYPE_MAIN = 0
XFRM_INF = 0xFFFFFFFFFFFFFFFF
XFRMA_REPLAY_ESN_MAX = 4096  # bits

IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_COMP = 108

# Per-socket policies (linux/in.h, linux/in6.h) and NAT-T (linux/udp.h)
IP_XFRM_POLICY = 17
IPV6_XFRM_POLICY = 35
SOL_UDP = 17
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2
