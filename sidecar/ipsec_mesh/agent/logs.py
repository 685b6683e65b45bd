"""Structured logging: one JSON object per line, or plain text. Never key material:
the IKE core's events and objects hide keys in their reprs, and nothing logs raw payloads.

Every record passes a `LogRateLimiter`: a peer (or anyone who can send a datagram)
can make the sidecar log, and one line per datagram filled disks and ate the CPU the
handshakes needed (issue 10). Per message template, the first few lines of a window
go out as they are; the rest are counted and summarised in one line when it ends.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

from ..records import record

#: Lines per (logger, level, message template) and window before the rest are summarised.
LOG_BURST = 5
LOG_WINDOW = 10.0
MAX_TEMPLATES = 512  # distinct templates tracked at once (the oldest window is closed first)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        suppressed = getattr(record, "suppressed", None)
        if suppressed is not None:
            entry["suppressed"] = suppressed
        return json.dumps(entry)


@record
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class LogRateLimiter(logging.Filter):
    """At most `burst` records per (logger, level, template) per `window` seconds.

    Records beyond that are dropped and counted; when the window ends (at the next
    record of any kind, or at `flush`) one summary record per template says how many
    were suppressed. Attach it to a handler with `attach`, so summaries go out there.
    """

    def __init__(self, *, burst: int = LOG_BURST, window: float = LOG_WINDOW,
                 clock: Callable[[], float] = time.monotonic, max_templates: int = MAX_TEMPLATES):
        super().__init__()
        self.burst, self.window, self.clock, self.max_templates = burst, window, clock, max_templates
        self.handler: logging.Handler | None = None
        # Windows in the order they started (a renewed one moves to the end), so the
        # ended ones are always at the front: closing them costs nothing per record.
        self._windows: dict[tuple, _Window] = {}
        self.suppressed_total = 0

    def attach(self, handler: logging.Handler) -> logging.Handler:
        self.handler = handler
        handler.addFilter(self)
        return handler

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "suppressed", None) is not None:
            return True  # our own summary
        now = self.clock()
        self._close_ended(now)
        key = (record.name, record.levelno, record.msg if isinstance(record.msg, str) else type(record.msg).__name__)
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_templates:
                self._close(*next(iter(self._windows.items())))
            window = self._windows[key] = _Window(now)
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.suppressed += 1
        self.suppressed_total += 1
        return False

    def flush(self) -> None:
        """Summarise the windows that have ended (the agent calls this periodically)."""
        self._close_ended(self.clock())

    def _close_ended(self, now: float) -> None:
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.start < self.window:
                return
            self._close(key, window)

    def _close(self, key: tuple, window: _Window) -> None:
        del self._windows[key]
        if not window.suppressed or self.handler is None:
            return
        name, level, template = key
        record = logging.LogRecord(name, level, "", 0, "%d more like %r suppressed in the last %.0fs",
                                   (window.suppressed, template, self.window), None)
        record.suppressed = window.suppressed
        self.handler.handle(record)


def make_handler(fmt: str = "text", stream=None, limiter: LogRateLimiter | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return (limiter or LogRateLimiter()).attach(handler)


def flush_rate_limited() -> None:
    """Summarise ended windows of the limiters on the root logger's handlers."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, LogRateLimiter):
                f.flush()


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    # Neither format shows source lines, threads or processes: skip collecting them for
    # every record (the "Optimization" knobs of the logging HOWTO).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt)]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
