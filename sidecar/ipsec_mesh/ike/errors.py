"""Typed errors of the IKE core.

Everything that comes off the network is hostile: a parser or a check that
rejects input raises one of these, never a bare ValueError/IndexError/KeyError.
The state machine catches `IkeError` at its boundary, answers with the notify
the error carries where RFC 7296 says to answer, and otherwise drops.
"""

from __future__ import annotations

from .constants import NotifyType


class IkeError(Exception):
    """Base of every error the IKE core raises on purpose."""

    #: Notify to send back where the protocol says to answer this error; on the initiator's
    #: side also the error notify the peer answered with (any number, hence int).
    notify: int | None = None

    def __init__(self, message: str, *, notify: int | None = None):
        super().__init__(message)
        if notify is not None:
            self.notify = notify


class ParseError(IkeError):
    """A message or payload is malformed: truncated, bad lengths, bad values."""

    notify = NotifyType.INVALID_SYNTAX


class UnsupportedCriticalPayload(ParseError):
    """A payload we do not know arrived with the critical bit set."""

    notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, message: str, payload_type: int):
        super().__init__(message)
        self.payload_type = payload_type


class InvalidMajorVersion(ParseError):
    """The IKE header carries a major version other than 2 (RFC 7296 section 2.5)."""

    notify = NotifyType.INVALID_MAJOR_VERSION

    def __init__(self, message: str, version: int):
        super().__init__(message)
        self.version = version


class IntegrityError(IkeError):
    """An encrypted payload failed authentication (bad ICV or bad padding).

    Never answered: RFC 7296 section 2.21.2 says to drop silently.
    """


class CryptoError(IkeError):
    """A key exchange value or a key is unusable (RFC 6989 checks, bad KEM ciphertext)."""

    notify = NotifyType.INVALID_SYNTAX


class NoProposalChosen(IkeError):
    notify = NotifyType.NO_PROPOSAL_CHOSEN


class InvalidKePayload(IkeError):
    """The peer's KE group is not the one we selected; carries the group we want."""

    notify = NotifyType.INVALID_KE_PAYLOAD

    def __init__(self, message: str, wanted_group: int):
        super().__init__(message)
        self.wanted_group = wanted_group


class AuthenticationFailed(IkeError):
    notify = NotifyType.AUTHENTICATION_FAILED


class CertificateError(AuthenticationFailed):
    """A certificate chain is untrusted, expired, or does not match the IKE identity."""


class IdentityError(ParseError):
    """An identity (ID payload or configured text) is malformed or of an unsupported type."""


class TsUnacceptable(IkeError):
    notify = NotifyType.TS_UNACCEPTABLE


class FragmentError(IkeError):
    """Reassembly failed: too many fragments, inconsistent totals, too large."""


class InvariantError(AssertionError):
    """Our own invariant broke: a bug, never the peer's doing.

    Raised explicitly rather than by `assert`, because the sidecar image runs Python with
    -OO (docstrings dropped: 0.7 MB per sidecar, docs/benchmarks.md), which also drops every
    `assert`; an AssertionError subclass, so what caught a failed assert still catches it.
    """
