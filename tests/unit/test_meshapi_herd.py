"""Sidecars whose watches broke at the same instant (the operator restarted) must not retry in step.

Counts, not clocks: 2,000 retry loops fail together several times; the delays they ask for
are recorded (asyncio.sleep replaced) and their retry *times* (the sums of their delays)
sorted into slices of the window. In step, every loop lands in one slice.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from ipsec_mesh.meshapi import retry as retry_module
from ipsec_mesh.meshapi.errors import MeshApiRequestError
from ipsec_mesh.meshapi.retry import FIRST_DELAY, MAX_DELAY, Backoff, retry

WATCHERS = 2000


@pytest.fixture
def clocks(monkeypatch) -> dict[int, list[float]]:
    """Per retry loop (its task), the times at which it tried again, without waiting."""
    tries: dict[int, list[float]] = {}

    async def sleep(delay: float) -> None:
        times = tries.setdefault(id(asyncio.current_task()), [])
        times.append((times[-1] if times else 0.0) + delay)

    monkeypatch.setattr(retry_module.aio, "sleep", sleep)
    return tries


def failing(times: int):
    calls = []

    async def call():
        calls.append(1)
        if len(calls) <= times:
            raise MeshApiRequestError("connection failed: ConnectionRefusedError(111)")
        return "ok"

    return call


async def test_watchers_broken_together_retry_spread_over_each_window_not_in_step(clocks):
    await asyncio.gather(*(retry(failing(4), "peer-map watch") for _ in range(WATCHERS)))
    assert len(clocks) == WATCHERS
    for attempt in range(4):
        at = [times[attempt] for times in clocks.values()]
        window = max(at)
        slices = Counter(min(int(t / window * 10), 9) for t in at)
        # Spread: no tenth of the window holds more than about a fifth of them (in step: all in
        # one). The retry times are sums of uniform delays; 1,200 simulated runs peaked at 20.5 %.
        assert max(slices.values()) < WATCHERS * 0.3, (attempt, sorted(slices.items()))
        assert len(slices) == 10


def test_each_delay_stays_under_a_ceiling_that_doubles_to_the_cap_and_keeps_the_old_mean():
    samples: dict[int, list[float]] = {}
    for seed in range(400):
        backoff = Backoff(rng=random.Random(seed))
        for attempt in range(9):
            samples.setdefault(attempt, []).append(backoff.next())
    for attempt, delays in samples.items():
        ceiling = min(2 * FIRST_DELAY * 2 ** attempt, MAX_DELAY)
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.9 * ceiling and min(delays) < 0.1 * ceiling
        mean = sum(delays) / len(delays)
        assert abs(mean - ceiling / 2) < 0.1 * ceiling  # a lone sidecar waits as long as before, on average
    backoff = Backoff(rng=random.Random(1))
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.next() <= 2 * FIRST_DELAY
