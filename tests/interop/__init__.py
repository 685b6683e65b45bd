"""Interop tests against strongSwan charon (see README.md)."""
