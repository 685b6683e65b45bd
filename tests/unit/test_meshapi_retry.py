"""One refusal list and one backoff for every mesh API caller in the sidecar (issue 12)."""

from __future__ import annotations

import asyncio

import pytest

from ipsec_mesh.agent import bootstrap
from ipsec_mesh.meshapi import retry as retry_module
from ipsec_mesh.meshapi.client import MeshApiClient
from ipsec_mesh.meshapi.errors import MeshApiRequestError
from ipsec_mesh.meshapi.retry import MAX_DELAY, REFUSALS, Backoff, is_refusal, retry

# Every status the client can raise with: none (no answer), redirects, client and server errors,
# and a 200 whose body was malformed (HttpProtocolError keeps the status line's code).
STATUSES = (None, 200, 301, 304, 400, 401, 403, 404, 405, 408, 409, 429, 500, 502, 503, 504)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The delays asked for, without waiting them."""
    asked: list[float] = []

    async def sleep(delay: float) -> None:
        asked.append(delay)

    monkeypatch.setattr(retry_module.aio, "sleep", sleep)
    return asked


def failing(status: int | None, times: int):
    """A call that raises `times` times with `status`, then returns "ok"; counts its calls."""
    calls = []

    async def call():
        calls.append(1)
        if len(calls) <= times:
            raise MeshApiRequestError(f"HTTP {status}", status)
        return "ok"

    return call, calls


def test_refusals_are_what_a_retry_cannot_change():
    assert REFUSALS == {400, 401, 403, 404}
    assert not is_refusal(MeshApiRequestError("connection refused"))
    assert not is_refusal(MeshApiRequestError("not in the mesh yet", 503))
    assert is_refusal(MeshApiRequestError("wrong URL", 404))


def under(delays: list[float], ceilings: list[float]) -> bool:
    """Each delay drawn below its ceiling (full jitter: tests/unit/test_meshapi_herd.py)."""
    return len(delays) == len(ceilings) and all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))


async def test_backoff_doubles_to_its_cap_and_starts_again_after_reset():
    backoff = Backoff()
    delays = [backoff.next() for _ in range(9)]
    assert under(delays, [1.0, 2.0, 4.0, 8.0, 16.0, MAX_DELAY, MAX_DELAY, MAX_DELAY, MAX_DELAY])
    backoff.reset()
    assert backoff.next() <= 1.0


@pytest.mark.parametrize("status", STATUSES)
async def test_retry_raises_a_refusal_at_once_and_retries_anything_else(status, sleeps):
    call, calls = failing(status, 3)
    if status in REFUSALS:
        with pytest.raises(MeshApiRequestError):
            await retry(call, "test")
        assert len(calls) == 1 and sleeps == []
    else:
        assert await retry(call, "test") == "ok"
        assert len(calls) == 4 and under(sleeps, [1.0, 2.0, 4.0])


async def test_retry_after_start_retries_refusals_too_and_reports_each_failure(sleeps):
    call, calls = failing(401, 2)
    seen = []
    assert await retry(call, "renewal", refusal_ends=False, on_error=seen.append) == "ok"
    assert len(calls) == 3 and [exc.status for exc in seen] == [401, 401] and under(sleeps, [1.0, 2.0])


async def _first_try_at_bootstrap(status) -> bool:
    """True if bootstrap gives up on the first answer `status`."""
    call, calls = failing(status, 1)
    try:
        await bootstrap.with_backoff(call, "fetching the first peer map")
    except bootstrap.BootstrapError as exc:
        assert exc.exit_code == bootstrap.EXIT_REFUSED
        return True
    assert len(calls) == 2
    return False


async def _first_try_in_watch(status) -> bool:
    """True if the client's peer-map watch hands the first answer `status` to its caller."""
    client = MeshApiClient("https://127.0.0.1:1", ca_bundle="", token=lambda: "t")
    answers = [MeshApiRequestError(f"HTTP {status}", status)]

    async def open_watch(stack, version, wait):
        if answers:
            raise answers.pop()
        await asyncio.Event().wait()  # no newer map: the watch waits

    client._open_watch = open_watch
    watch = client.watch_peer_maps()
    try:
        await asyncio.wait_for(anext(watch), 0.5)
    except MeshApiRequestError:
        return True
    except TimeoutError:
        return False
    finally:
        await watch.aclose()
    raise AssertionError("the watch yielded a map it never got")


@pytest.mark.parametrize("status", STATUSES)
async def test_bootstrap_and_the_watch_refuse_the_same_statuses(status, sleeps):
    # A 404 used to end the bootstrap but be retried silently, forever, inside the watch.
    assert await _first_try_at_bootstrap(status) == await _first_try_in_watch(status) == (status in REFUSALS)
