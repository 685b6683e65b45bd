"""The contract between an IKE SA and its exchanges (libcharon's task.h), for both roles.

An exchange we initiate is a `Task` queued on the IKE SA: the task manager starts it
when no other request is outstanding (`start` sends exactly one request), hands it the
response (`on_response`), and calls `on_error` when handling the response raised an
IkeError or `on_timeout` when retransmissions ran out. A task that returns True from
`obsolete` when its turn comes is dropped unstarted.

An exchange the peer initiates is answered by a `Responder`: one object per IKE SA and
exchange type (so that what a responder keeps between requests lives on it, not on the
SA); `respond` returns the `Reply`, or None to ignore the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Iterable

from ..records import record
from .constants import NotifyType
from .errors import IkeError
from .payloads import Message, NotifyPayload, Payload
from .proposals import ProposalSpec

if TYPE_CHECKING:
    from .sa import IkeSa

log = logging.getLogger("ipsec_mesh.ike")

MAX_KE_RETRIES = 2


class Task:
    """One exchange we initiate (subclasses set `exchange` and implement start/on_response)."""

    exchange: int

    def obsolete(self, sa: IkeSa) -> bool:
        return False

    def start(self, sa: IkeSa, now: float) -> None:
        raise NotImplementedError

    def on_response(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
        raise NotImplementedError

    def on_error(self, sa: IkeSa, exc: IkeError, now: float) -> None:
        log.warning("%s: %s failed: %s", sa.label, type(self).__name__, exc)
        sa.close("failed", now)

    def on_timeout(self, sa: IkeSa, now: float) -> None:
        sa.close("timeout", now)


@record
class Reply:
    """A responder's answer: payloads to send, and what to do once they are sent."""

    payloads: list[Payload]
    after: Callable[[float], None] | None = None
    close: str | None = None  # close the IKE SA after sending, with this reason


class Responder:
    """Answers the peer's requests of the exchange types in `exchanges`, for one IKE SA."""

    exchanges: tuple[int, ...]

    def respond(self, sa: IkeSa, msg: Message, raw: bytes, now: float) -> Reply | None:
        raise NotImplementedError

    def next_timer(self) -> float | None:
        """When `on_timers` next has something to do, if ever."""
        return None

    def on_timers(self, sa: IkeSa, now: float) -> None:
        pass

    def close(self) -> None:
        """The IKE SA is closed: forget what is kept between requests."""


def first_error(msg: Message) -> NotifyPayload | None:
    """The first error notify of a response, if it carries any."""
    return next((n for n in msg.all(NotifyPayload) if n.is_error), None)


class KeTask(Task):
    """A CREATE_CHILD_SA task with a key exchange that INVALID_KE_PAYLOAD can redirect."""

    group: int | None
    ke_retries: int


def retry_with_wanted_group(task: KeTask, sa: IkeSa, notify: NotifyPayload,
                            proposals: Iterable[ProposalSpec]) -> bool:
    """INVALID_KE_PAYLOAD naming a group we also offer: queue `task` again with that group."""
    if notify.type != NotifyType.INVALID_KE_PAYLOAD or len(notify.data) < 2 or task.ke_retries >= MAX_KE_RETRIES:
        return False
    wanted = int.from_bytes(notify.data[:2], "big")
    if not any(wanted in p.ke for p in proposals):
        return False
    task.ke_retries += 1
    task.group = wanted
    sa.tasks.queue_first(task)
    return True
