"""Log lines about client misbehaviour, rate-limited per kind so that no client can fill the disk."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

BURST = 5
INTERVAL = 60.0


class RateLimitedLog:
    """At most `burst` lines per `interval` seconds for each kind; the rest are counted and summed up.

    Kinds are a few fixed strings chosen by the code (never taken from a request), so the
    table stays small. The count of held-back lines is logged with the first line of the
    next window.
    """

    def __init__(self, logger: logging.Logger, burst: int = BURST, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._windows: dict[str, list[float | int]] = {}  # kind -> [window start, lines, held back]

    def log(self, level: int, kind: str, message: str, *args: Any) -> None:
        now = self._clock()
        window = self._windows.setdefault(kind, [now, 0, 0])
        if now - window[0] >= self.interval:
            if window[2]:
                self.logger.log(level, "%d more %s message(s) held back in the last %d s",
                                window[2], kind, int(now - window[0]))
            window[:] = [now, 0, 0]
        if window[1] < self.burst:
            window[1] += 1
            self.logger.log(level, message, *args)
        else:
            window[2] += 1


class QuietServerLogger(logging.LoggerAdapter):
    """For aiohttp's server logger: one rate-limited line per error, never a traceback."""

    def __init__(self, logger: logging.Logger):
        super().__init__(logger, {})
        self._limited = RateLimitedLog(logger)

    def log(self, level: int, msg: Any, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        error = sys.exc_info()[1] if exc_info is True else exc_info
        error = error if isinstance(error, BaseException) else None
        text = str(msg) % args if args else str(msg)
        if error is not None:
            text = f"{text}: {type(error).__name__}"
        self._limited.log(level, "server", "%s", text)
