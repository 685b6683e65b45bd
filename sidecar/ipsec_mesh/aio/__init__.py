"""The sidecar's event loop and what it awaits, without asyncio (see loop.py for why).

Below every other layer of the sidecar: the IKE core does not use it (sans-IO); the XFRM
layer, the mesh API client and the agent may. Product code imports from here:

    from .. import aio
    aio.run(main())                      # the process's loop (ours)
    loop = aio.get_running_loop()        # ours, or asyncio's in the in-process tests
    await aio.sleep(1); aio.Event(); async with aio.timeout(5): ...
    stream = await aio.open_connection(host, port, ssl=context)
"""

from .helpers import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    Event,
    create_task,
    current_task,
    get_running_loop,
    sleep,
    timeout,
    to_thread,
    wait,
    wait_for,
)
from .loop import CancelledError, EventLoop, Future, Handle, InvalidStateError, Task, TimerHandle, run
from .streams import IncompleteReadError, LimitOverrunError, Server, Stream, open_connection, start_server

__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "CancelledError", "Event", "EventLoop", "Future", "Handle",
    "IncompleteReadError", "InvalidStateError", "LimitOverrunError", "Server", "Stream", "Task", "TimerHandle",
    "create_task", "current_task", "get_running_loop", "open_connection", "run", "sleep", "start_server",
    "timeout", "to_thread", "wait", "wait_for",
]
