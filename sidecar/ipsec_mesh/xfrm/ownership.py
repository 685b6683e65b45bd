"""How ipsec-mesh recognises the XFRM objects it installed (see docs/xfrm.md).

Two tags, neither of which changes what traffic matches what:

* SAs (including larval SAs from SPI allocation) carry a reqid inside
  `REQID_BASE .. REQID_BASE + 0xFFFF`. The reqid only ties an SA to the policy
  templates that name it; inbound lookup is by (dst, SPI, proto), so the band
  costs nothing. Host part 0 is reserved for SPI allocation.
* Policies carry `POLICY_TAG` in the selector's `user` field. The kernel
  compares whole selectors (memcmp) to identify a policy, so the tag is part of
  the policy's identity, but selector matching looks only at addresses,
  ports, protocol and ifindex, so packets are unaffected. Marks would change
  matching (a marked policy only sees marked packets), which is why they are
  not used for this.
"""

from __future__ import annotations

from .errors import XfrmSpecError

REQID_BASE = 0x6D650000  # "me" (mesh) in the high half
REQID_HOST_BITS = 16
LARVAL_REQID = REQID_BASE  # reqid of SPIs we allocate before keys exist
POLICY_TAG = 0x6D657368  # "mesh"


def owned_reqid(number: int) -> int:
    """The reqid for our child SA number `number` (1..65535)."""
    if not 0 < number < 1 << REQID_HOST_BITS:
        raise XfrmSpecError("owned_reqid", f"reqid number {number} outside 1..65535")
    return REQID_BASE | number


def is_owned_reqid(reqid: int) -> bool:
    return reqid >> REQID_HOST_BITS == REQID_BASE >> REQID_HOST_BITS


def is_owned_policy_tag(user: int) -> bool:
    return user == POLICY_TAG
