"""Typed errors of the mesh API data model and client.

A peer map or a YAML file is input from outside the sidecar: every check that
rejects it raises `PeerMapError` with the path of the offending field, never a
bare KeyError/TypeError/ValueError.
"""

from __future__ import annotations


class MeshApiError(Exception):
    """Base of every error the meshapi package raises on purpose."""


class PeerMapError(MeshApiError):
    """A peer-map document (JSON from the operator, or a YAML file) is invalid."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class ProposalError(PeerMapError):
    """A proposal string names an unknown or unsupported algorithm."""


class MeshApiRequestError(MeshApiError):
    """The operator's mesh API refused a request or answered nonsense."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
