"""Shared test helpers: the in-memory IKE network, PKI, namespaces, kmock and the operator's fixtures."""
