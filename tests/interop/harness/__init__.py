"""Interop test harness: network namespaces, strongSwan charon over vici, captures."""
