"""Typed errors of the XFRM layer.

Every failure the kernel reports, every malformed reply and every invalid
request spec surfaces as an `XfrmError` that names the operation and carries
an errno, so the agent can decide (EEXIST on add: already there; ESRCH or
ENOENT on delete: already gone; EPROTONOSUPPORT: the kernel has no ESP).
"""

from __future__ import annotations

import errno as errno_module
import os


class XfrmError(Exception):
    """An XFRM operation failed.

    `operation` is our name for the call ("add_sa", "dump_policies"...),
    `errno` the kernel's (positive) error number, `detail` the kernel's extended
    ack text when it sent one.
    """

    def __init__(self, operation: str, errno: int, detail: str = ""):
        self.operation = operation
        self.errno = errno
        self.detail = detail
        reason = os.strerror(errno) if errno else "error"
        name = errno_module.errorcode.get(errno, str(errno))
        text = f"{operation}: {reason} ({name})"
        if detail:
            text += f": {detail}"
        super().__init__(text)


class XfrmParseError(XfrmError):
    """A netlink message from the kernel is truncated or inconsistent."""

    def __init__(self, operation: str, detail: str):
        super().__init__(operation, errno_module.EBADMSG, detail)


class XfrmSpecError(XfrmError, ValueError):
    """A request we were asked to send is invalid (caught before the kernel sees it)."""

    def __init__(self, operation: str, detail: str):
        super().__init__(operation, errno_module.EINVAL, detail)


def esp_unavailable_hint(err: XfrmError) -> str:
    """A human hint for the classic "kernel has no ESP" failure, else ''."""
    if err.errno in (errno_module.EPROTONOSUPPORT, errno_module.ENOENT, errno_module.ENOSYS):
        return (
            "the kernel has no ESP transform or lacks the algorithm"
            " (modules esp4/esp6 and the AEAD cipher must be available)"
        )
    return ""
