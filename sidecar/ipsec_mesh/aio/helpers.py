"""What the sidecar awaits, written once on the loop interface both loops offer.

`get_running_loop()` is our loop when it runs in this thread, else asyncio's running loop
(when asyncio is imported: the in-process tests, next to the operator). Everything here uses
only methods both have (`time`, `call_at`, `call_soon_threadsafe`, `create_future`,
`create_task`) and the Task methods both have (`cancel`, `cancelling`, `uncancel`), so the
product behaves the same on either.
"""

from __future__ import annotations

import collections
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, TypeVar

from .loop import CancelledError, EventLoop, Future, Task, running_loop

T = TypeVar("T")

FIRST_COMPLETED = "FIRST_COMPLETED"
ALL_COMPLETED = "ALL_COMPLETED"


def get_running_loop() -> EventLoop:
    """The loop running in this thread: ours, or asyncio's; RuntimeError if none."""
    loop = running_loop()
    if loop is not None:
        return loop
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        raise RuntimeError("no running event loop")
    if CancelledError is not asyncio.CancelledError:
        # ipsec_mesh.aio was imported before asyncio: our `except CancelledError` would miss its cancellations.
        raise RuntimeError("asyncio was imported after ipsec_mesh.aio: import asyncio first")
    theirs: EventLoop = asyncio.get_running_loop()  # the same interface, duck-typed
    return theirs


def current_task() -> Task | None:
    loop = running_loop()
    if loop is not None:
        return loop._current_task
    return sys.modules["asyncio"].current_task() if "asyncio" in sys.modules else None


def create_task(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> Task:
    return get_running_loop().create_task(coro, name=name)


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@types.coroutine
def _yield_once() -> Generator[None, None, None]:
    yield  # both loops' Tasks take a bare yield as "run me again on the next turn"


async def sleep(delay: float, result: T | None = None) -> T | None:
    if delay <= 0:
        await _yield_once()
        return result
    loop = get_running_loop()
    future = loop.create_future()
    handle = loop.call_at(loop.time() + delay, _settle, future, result)
    try:
        slept: T | None = await future
        return slept
    finally:
        handle.cancel()


class Event:
    """asyncio.Event: `wait()` until `set()`; bound to whichever loop waits on it."""

    def __init__(self) -> None:
        self._value = False
        self._waiters: collections.deque[Future] = collections.deque()

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters:
                _settle(waiter, True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


class timeout:  # noqa: N801 (named as asyncio.timeout, used the same way)
    """`async with timeout(delay):` cancels the block after `delay` seconds and raises TimeoutError
    instead; a cancellation from outside stays a cancellation (counted with cancelling/uncancel)."""

    def __init__(self, delay: float | None):
        self._delay = delay
        self._task: Task | None = None
        self._handle: Any = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> timeout:
        task = current_task()
        if task is None:
            raise RuntimeError("timeout() used outside a task")
        self._task = task
        self._cancelling = task.cancelling()
        if self._delay is not None:
            loop = get_running_loop()
            self._handle = loop.call_at(loop.time() + self._delay, self._on_timeout)
        return self

    def _on_timeout(self) -> None:
        self._expired = True
        self._task.cancel()  # type: ignore[union-attr]
        self._handle = None

    def expired(self) -> bool:
        return self._expired

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired and self._task is not None:
            # Ours if nobody else cancelled the task meanwhile: then it is a timeout.
            if self._task.uncancel() <= self._cancelling and exc_type is not None \
                    and issubclass(exc_type, CancelledError):
                raise TimeoutError from exc


async def wait_for(awaitable: Awaitable[T], delay: float | None) -> T:
    """The awaitable's result, or TimeoutError after `delay` seconds (it is cancelled then)."""
    async with timeout(delay):
        return await awaitable


async def wait(futures: Iterable[Future], *, return_when: str = ALL_COMPLETED) -> tuple[set[Future], set[Future]]:
    """(done, pending) once the first (FIRST_COMPLETED) or all (ALL_COMPLETED) of `futures` are done."""
    pending = set(futures)
    if not pending:
        raise ValueError("wait() needs at least one future")
    left = sum(1 for future in pending if not future.done())
    if left and (return_when == ALL_COMPLETED or left == len(pending)):
        waiter = get_running_loop().create_future()

        def one_done(_: Future) -> None:
            nonlocal left
            left -= 1
            if return_when == FIRST_COMPLETED or left == 0:
                _settle(waiter)

        for future in pending:
            future.add_done_callback(one_done)
        try:
            await waiter
        finally:
            for future in pending:
                future.remove_done_callback(one_done)
    done = {future for future in pending if future.done()}
    return done, pending - done


async def to_thread(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in a new thread, awaited on the loop: for the rare blocking call (a name
    lookup). One thread per call; the callers make one call per request."""
    loop = get_running_loop()
    future = loop.create_future()

    def work() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # noqa: BLE001 (handed to the awaiting task)
            outcome: tuple[Any, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        try:
            loop.call_soon_threadsafe(_settle, future, *outcome)
        except RuntimeError:
            pass  # the loop closed meanwhile: no one waits any more

    threading.Thread(target=work, name="ipsec-mesh-to-thread", daemon=True).start()
    returned: T = await future
    return returned
