"""Run a coroutine on either event loop the sidecar's code meets: its own (ipsec_mesh.aio, in
the sidecar's process) and asyncio's (next to the operator in the in-process tests)."""

from __future__ import annotations

import asyncio

import pytest

from ipsec_mesh import aio


@pytest.fixture(params=["aio", "asyncio"])
def on(request):
    """`on(coro)` runs it to completion on our loop or on asyncio's (the test runs once with each)."""
    return aio.run if request.param == "aio" else asyncio.run
