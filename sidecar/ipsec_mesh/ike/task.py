"""What every exchange task shares (libcharon's task.h): small steps used by several tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import NotifyType
from .payloads import Message, NotifyPayload

if TYPE_CHECKING:
    from .sa import IkeSa

MAX_KE_RETRIES = 2


def first_error(msg: Message) -> NotifyPayload | None:
    """The first error notify of a response, if it carries any."""
    return next((n for n in msg.all(NotifyPayload) if n.is_error), None)


def retry_with_wanted_group(task, sa: IkeSa, notify: NotifyPayload, proposals) -> bool:
    """INVALID_KE_PAYLOAD naming a group we also offer: queue `task` again with that group."""
    if notify.type != NotifyType.INVALID_KE_PAYLOAD or len(notify.data) < 2 or task.ke_retries >= MAX_KE_RETRIES:
        return False
    wanted = int.from_bytes(notify.data[:2], "big")
    if not any(wanted in p.ke for p in proposals):
        return False
    task.ke_retries += 1
    task.group = wanted
    sa.tasks.appendleft(task)
    return True
