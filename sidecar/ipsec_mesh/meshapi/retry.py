"""When to ask the mesh API again, and how long to wait: one answer for every caller.

A *refusal* is an answer the same request will get again until something outside the
sidecar changes:

- 400: the request itself is wrong (a CSR or query the operator does not take);
- 401: the token is not accepted (wrong audience, forged, expired);
- 403: the token is valid but asks for what is not its pod's (an earlier pod's token);
- 404: the API does not serve the path: a wrong API URL (path prefix) or an operator
  without this API version. A pod the operator does not know (yet) is 503, not 404.

Anything else (no answer, a timeout, a malformed answer, 429, 5xx, a redirect we do not
follow) is transient: retried after a delay drawn at random ("full jitter") below a
ceiling of 1 s, 2 s, 4 s ... up to `MAX_DELAY`. Why random: when the operator restarts,
every sidecar's watch breaks at the same instant; fixed delays bring them all back at the
same instants too, and an operator short of CPU lets many of those handshakes time out,
which sends them round again (docs/benchmarks.md). Drawn below the ceiling, a herd arrives
spread over each window, while a lone sidecar still waits 0.5 s, 1 s, 2 s ... on average.
The price: a watch cut off for long waits up to one ceiling (30 s) after the operator is back.

What a refusal means is the caller's choice, with `refusal_ends`:
- at bootstrap (first peer map, first certificate) it ends the sidecar (exit code 3):
  nothing is in force yet, the startup probe holds the app containers back, and a
  crash-looping pod with the API's reason in its log is the clearest sign of a
  misconfigured token or URL;
- after start (peer-map watch, certificate renewal) it never stops the data plane: the
  map and certificate in force stay, the error is recorded and the call retried, since a
  token rotation or an operator upgrade can end it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .. import aio
from .errors import MeshApiRequestError

log = logging.getLogger("ipsec_mesh.meshapi")

T = TypeVar("T")

REFUSALS = frozenset({400, 401, 403, 404})
FIRST_DELAY = 0.5  # the mean of the first delay; its ceiling is twice that
MAX_DELAY = 30.0  # no delay is longer


def is_refusal(exc: MeshApiRequestError) -> bool:
    return exc.status in REFUSALS


class Backoff:
    """Random delays below a ceiling of twice `first`, doubling up to `cap`; `reset()` after a success."""

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY, rng: random.Random | None = None):
        self.first, self.cap = first, cap
        self._rng = rng or random.Random()
        self._ceiling = min(2 * first, cap)

    def next(self) -> float:
        ceiling = self._ceiling
        self._ceiling = min(ceiling * 2, self.cap)
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self._ceiling = min(2 * self.first, self.cap)


async def retry(call: Callable[[], Awaitable[T]], what: str, *, refusal_ends: bool = True,
                backoff: Backoff | None = None,
                on_error: Callable[[MeshApiRequestError], None] | None = None) -> T:
    """`call()` until it succeeds. A refusal raises if `refusal_ends`; each failure retried goes to `on_error`."""
    backoff = backoff or Backoff()
    while True:
        try:
            return await call()
        except MeshApiRequestError as exc:
            if refusal_ends and is_refusal(exc):
                raise
            delay = backoff.next()
            if on_error is not None:
                on_error(exc)
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
        await aio.sleep(delay)
