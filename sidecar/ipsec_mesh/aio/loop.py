"""A single-threaded event loop: a selector, a timer heap, and Tasks that drive coroutines.

Why not asyncio: in the sidecar's process asyncio costs 2.4 MB of private memory (47 modules,
with subprocess and concurrent.futures that only it loads), more than the rest of the agent's
event handling put together, in every pod. The sidecar uses a small part of it; this loop
offers that part under the same method names and semantics (`time`, `call_soon`, `call_later`,
`call_at`, `add_reader`/`add_writer`, `create_future`, `create_task`, `add_signal_handler`,
`run_until_complete`, `close`), and its Future follows asyncio's awaitable protocol, so code
written against `get_running_loop()` (helpers.py) runs on this loop in the sidecar's process
and on asyncio's next to the operator in the in-process tests.

Cancellation: when asyncio is already imported (tests, the operator), `CancelledError` IS
asyncio's, and this loop raises that class; otherwise it is our own BaseException. Either way
product code catches `aio.CancelledError` and means the class the running loop throws.
"""

from __future__ import annotations

import _thread
import collections
import heapq
import itertools
import logging
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

log = logging.getLogger("ipsec_mesh.aio")


class _CancelledError(BaseException):
    """A Task or Future was cancelled (a BaseException, as asyncio's: `except Exception` lets it through)."""


#: The class both loops throw into a cancelled task in this process (see the module's docstring).
CancelledError: type[BaseException] = getattr(sys.modules.get("asyncio"), "CancelledError", _CancelledError)


class InvalidStateError(Exception):
    """A Future's result was set twice, or read before it was set."""


#: Rebuild the timer heap when more than this many entries (and over half of it) are cancelled
#: timers: the agent re-arms its IKE timer at every flush, and cancelled entries must not pile up.
MAX_CANCELLED_TIMERS = 100
_SIGNAL_BYTE_NONE = 0  # what call_soon_threadsafe writes to the wake-up socket: no signal has number 0


class Handle:
    """A callback scheduled on the loop; `cancel()` before it runs and it never does."""

    __slots__ = ("_callback", "_args", "_cancelled", "_loop")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...], loop: EventLoop):
        self._callback: Callable[..., Any] | None = callback
        self._args = args
        self._cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._callback, self._args = None, ()

    def cancelled(self) -> bool:
        return self._cancelled

    def _run(self) -> None:
        try:
            self._callback(*self._args)  # type: ignore[misc]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            # As asyncio's loop: a failing callback is reported, the loop goes on.
            log.error("exception in callback %r", self._callback, exc_info=True)


class TimerHandle(Handle):
    __slots__ = ("_when", "_scheduled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...], loop: EventLoop):
        super().__init__(callback, args, loop)
        self._when = when
        self._scheduled = True  # in the heap

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        if not self._cancelled and self._scheduled:
            self._loop._timer_cancelled()
        super().cancel()


class Future:
    """asyncio's awaitable protocol: `await` yields the future itself to the Task, which resumes
    when a done callback fires."""

    _asyncio_future_blocking = False

    def __init__(self, loop: EventLoop):
        self._loop = loop
        self._done = False
        self._cancelled = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Future], Any]] = []

    def get_loop(self) -> EventLoop:
        return self._loop

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def result(self) -> Any:
        if self._cancelled:
            raise CancelledError()
        if not self._done:
            raise InvalidStateError("result is not set")
        if self._exception is not None:
            raise self._exception.with_traceback(self._exception.__traceback__)
        return self._result

    def exception(self) -> BaseException | None:
        if self._cancelled:
            raise CancelledError()
        if not self._done:
            raise InvalidStateError("exception is not set")
        return self._exception

    def add_done_callback(self, fn: Callable[[Future], Any], *, context: Any = None) -> None:
        if self._done:
            self._loop.call_soon(fn, self)
        else:
            self._callbacks.append(fn)

    def remove_done_callback(self, fn: Callable[[Future], Any]) -> int:
        before = len(self._callbacks)
        self._callbacks = [cb for cb in self._callbacks if cb != fn]
        return before - len(self._callbacks)

    def set_result(self, result: Any) -> None:
        self._settle()
        self._result = result
        self._schedule_callbacks()

    def set_exception(self, exception: BaseException) -> None:
        self._settle()
        self._exception = exception
        self._schedule_callbacks()

    def cancel(self, msg: Any = None) -> bool:
        if self._done:
            return False
        self._done = self._cancelled = True
        self._schedule_callbacks()
        return True

    def _settle(self) -> None:
        if self._done:
            raise InvalidStateError("the future is already done")
        self._done = True

    def _schedule_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            self._loop.call_soon(fn, self)

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._done:
            self._asyncio_future_blocking = True
            yield self
        if not self._done:
            raise RuntimeError("await was not used with the future")
        return self.result()

    __iter__ = __await__


class Task(Future):
    """Drives a coroutine: each step runs it to its next `await` of a Future (or a bare yield)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], loop: EventLoop, name: str | None = None):
        super().__init__(loop)
        self._coro = coro
        self._name = name or f"Task-{next(_task_numbers)}"
        self._waiting_on: Future | None = None
        self._must_cancel = False
        self._cancel_requests = 0
        loop._tasks.add(self)
        loop.call_soon(self._step)

    def get_name(self) -> str:
        return self._name

    def get_coro(self) -> Coroutine[Any, Any, Any]:
        return self._coro

    def cancel(self, msg: Any = None) -> bool:
        if self._done:
            return False
        self._cancel_requests += 1
        if self._waiting_on is not None and self._waiting_on.cancel():
            return True  # the waiter's callback wakes us with CancelledError
        self._must_cancel = True
        return True

    def cancelling(self) -> int:
        return self._cancel_requests

    def uncancel(self) -> int:
        if self._cancel_requests > 0:
            self._cancel_requests -= 1
        return self._cancel_requests

    def _step(self, exc: BaseException | None = None) -> None:
        if self._done:
            return
        if self._must_cancel:
            exc = exc if isinstance(exc, CancelledError) else CancelledError()
            self._must_cancel = False
        self._waiting_on = None
        loop = self._loop
        loop._current_task = self
        try:
            result = self._coro.send(None) if exc is None else self._coro.throw(exc)
        except StopIteration as stop:
            if self._must_cancel:  # cancelled while running, and the coroutine returned anyway
                self._finish_cancelled()
            else:
                self._finish(stop.value, None)
        except CancelledError:
            self._finish_cancelled()
        except (KeyboardInterrupt, SystemExit) as error:
            self._finish(None, error)
            raise
        except BaseException as error:
            self._finish(None, error)
        else:
            if isinstance(result, Future) and result._asyncio_future_blocking:
                result._asyncio_future_blocking = False
                if result._loop is not loop:
                    loop.call_soon(self._step, RuntimeError(f"{self._name} awaits a future of another loop"))
                else:
                    self._waiting_on = result
                    result.add_done_callback(self._wakeup)
                    if self._must_cancel and result.cancel():
                        self._must_cancel = False
            elif result is None:  # a bare yield: sleep(0)
                loop.call_soon(self._step)
            else:
                loop.call_soon(self._step, RuntimeError(f"{self._name} yielded {result!r}, not a future"))
        finally:
            loop._current_task = None

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._loop._tasks.discard(self)
        if error is None:
            super().set_result(result)
        else:
            super().set_exception(error)

    def _finish_cancelled(self) -> None:
        self._loop._tasks.discard(self)
        super().cancel()

    def _wakeup(self, future: Future) -> None:
        try:
            future.result()
        except BaseException as exc:
            self._step(exc)
        else:
            self._step()

    def __repr__(self) -> str:
        return f"<Task {self._name} {'done' if self._done else 'pending'}>"


_task_numbers = itertools.count(1)
_running: tuple[EventLoop, int] | None = None  # the loop running now, and in which thread


def running_loop() -> EventLoop | None:
    """Our loop if it runs in this thread, else None."""
    running = _running
    return running[0] if running is not None and running[1] == _thread.get_ident() else None


def _wake_future(future: Future) -> None:
    if not future.done():
        future.set_result(None)


class EventLoop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._ready: collections.deque[Handle] = collections.deque()
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._cancelled_timers = 0
        self._sequence = itertools.count()
        self._stopping = False
        self._closed = False
        self._tasks: set[Task] = set()
        self._current_task: Task | None = None
        self._signal_handlers: dict[int, Handle] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r.fileno(), selectors.EVENT_READ,
                                (Handle(self._read_wakeup, (), self), None))

    # -- time and callbacks -----------------------------------------------------------------
    def time(self) -> float:
        return time.monotonic()

    def call_soon(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> Handle:
        self._check_closed()
        handle = Handle(callback, args, self)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> Handle:
        handle = self.call_soon(callback, *args)  # deque.append is atomic
        try:
            self._wake_w.send(bytes((_SIGNAL_BYTE_NONE,)))
        except OSError:
            pass  # full: the loop is awake already
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any, context: Any = None) -> TimerHandle:
        return self.call_at(self.time() + delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any, context: Any = None) -> TimerHandle:
        self._check_closed()
        if when != when:  # NaN compares false with everything: it would break the heap's order
            raise ValueError("a timer's time cannot be NaN")
        handle = TimerHandle(when, callback, args, self)
        heapq.heappush(self._timers, (when, next(self._sequence), handle))
        return handle

    def _timer_cancelled(self) -> None:
        self._cancelled_timers += 1
        if self._cancelled_timers > MAX_CANCELLED_TIMERS and self._cancelled_timers * 2 > len(self._timers):
            kept = []
            for entry in self._timers:
                if entry[2]._cancelled:
                    entry[2]._scheduled = False
                else:
                    kept.append(entry)
            heapq.heapify(kept)
            self._timers = kept
            self._cancelled_timers = 0

    # -- futures and tasks ------------------------------------------------------------------
    def create_future(self) -> Future:
        return Future(self)

    def create_task(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None, context: Any = None) -> Task:
        self._check_closed()
        return Task(coro, self, name)

    # -- readiness of file descriptors ------------------------------------------------------
    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        self._add(fd, selectors.EVENT_READ, 0, Handle(callback, args, self))

    def add_writer(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        self._add(fd, selectors.EVENT_WRITE, 1, Handle(callback, args, self))

    def remove_reader(self, fd: Any) -> bool:
        return self._remove(fd, selectors.EVENT_READ, 0)

    def remove_writer(self, fd: Any) -> bool:
        return self._remove(fd, selectors.EVENT_WRITE, 1)

    def _add(self, fd: Any, event: int, slot: int, handle: Handle) -> None:
        self._check_closed()
        try:
            key = self._selector.get_key(fd)
        except KeyError:
            handles: list[Handle | None] = [None, None]
            handles[slot] = handle
            self._selector.register(fd, event, tuple(handles))
            return
        handles = list(key.data)
        if handles[slot] is not None:
            handles[slot].cancel()  # type: ignore[union-attr]
        handles[slot] = handle
        self._selector.modify(fd, key.events | event, tuple(handles))

    def _remove(self, fd: Any, event: int, slot: int) -> bool:
        if self._closed:
            return False
        try:
            key = self._selector.get_key(fd)
        except KeyError:
            return False
        handles = list(key.data)
        old = handles[slot]
        handles[slot] = None
        events = key.events & ~event
        if events:
            self._selector.modify(fd, events, tuple(handles))
        else:
            self._selector.unregister(fd)
        if old is not None:
            old.cancel()
            return True
        return False

    # -- signals ------------------------------------------------------------------------------
    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` on the loop after `sig` arrives: the C-level handler only writes
        the signal's number to our wake-up socket (`signal.set_wakeup_fd`); we read it there."""
        self._check_closed()
        try:
            if not self._signal_handlers:
                signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            signal.signal(sig, _no_python_handler)
        except ValueError as exc:  # not the main thread
            raise RuntimeError(str(exc)) from None
        self._signal_handlers[sig] = Handle(callback, args, self)
        signal.siginterrupt(sig, False)

    def remove_signal_handler(self, sig: int) -> bool:
        if self._signal_handlers.pop(sig, None) is None:
            return False
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        if not self._signal_handlers:
            signal.set_wakeup_fd(-1)
        return True

    def _read_wakeup(self) -> None:
        while True:
            try:
                data = self._wake_r.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for number in data:
                handle = self._signal_handlers.get(number)
                if handle is not None:
                    self._ready.append(Handle(handle._callback, handle._args, self))  # type: ignore[arg-type]

    # -- running ------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return _running is not None and _running[0] is self

    def is_closed(self) -> bool:
        return self._closed

    def stop(self) -> None:
        self._stopping = True

    def run_forever(self) -> None:
        global _running
        self._check_closed()
        if _running is not None:
            raise RuntimeError("an event loop is already running")
        _running = (self, _thread.get_ident())
        try:
            while not self._stopping:
                self._run_once()
        finally:
            self._stopping = False
            _running = None

    def run_until_complete(self, awaitable: Any) -> Any:
        future = awaitable if isinstance(awaitable, Future) else self.create_task(awaitable)
        future.add_done_callback(lambda _: self.stop())
        self.run_forever()
        if not future.done():
            raise RuntimeError("the loop stopped before the future completed")
        return future.result()

    def _run_once(self) -> None:
        timeout: float | None
        if self._ready or self._stopping:
            timeout = 0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - self.time())
        else:
            timeout = None
        for key, mask in self._selector.select(timeout):
            reader, writer = key.data
            if mask & selectors.EVENT_READ and reader is not None and not reader._cancelled:
                self._ready.append(reader)
            if mask & selectors.EVENT_WRITE and writer is not None and not writer._cancelled:
                self._ready.append(writer)
        now = self.time()
        while self._timers and self._timers[0][0] <= now:
            handle = heapq.heappop(self._timers)[2]
            handle._scheduled = False
            if handle._cancelled:
                self._cancelled_timers -= 1
            else:
                self._ready.append(handle)
        for _ in range(len(self._ready)):  # what became ready meanwhile waits for the next turn
            ready = self._ready.popleft()
            if not ready._cancelled:
                ready._run()

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("cannot close a running event loop")
        if self._closed:
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        self._closed = True
        self._ready.clear()
        self._timers.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _check_closed(self) -> None:
        if self._closed:
            raise RuntimeError("the event loop is closed")


def _no_python_handler(signum: int, frame: Any) -> None:
    """Installed for a handled signal: the wake-up socket carries it to the loop."""


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run for our loop: run `main`, then cancel and finish what it left running, then close."""
    loop = EventLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = [task for task in loop._tasks if not task.done()]
            for task in left:
                task.cancel()
            for task in left:
                if not task.done():
                    loop.run_until_complete(task_settled(loop, task))
        finally:
            loop.close()


async def task_settled(loop: EventLoop, task: Task) -> None:
    """Wait for `task` to end, whatever its outcome."""
    if not task.done():
        waiter = loop.create_future()
        task.add_done_callback(lambda _: _wake_future(waiter))
        await waiter
