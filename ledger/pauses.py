"""Deadlines that a paused process does not misjudge.

A process that was frozen (SIGSTOP, a stalled VM, a long pause) wakes to its timers and its sockets at
once, and its timers run first: the signal that resumes it interrupts the event loop's wait for the
sockets, so the loop finds no data yet and every due timer fires. A deadline judged at that moment
misses the request or acknowledgement that arrived during the pause. Each one here gives the sockets
one short moment before it is judged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

WAKE_GRACE_S = 0.5


async def settles_on_waking(future: asyncio.Future) -> bool:
    """Whether ``future``, whose deadline has just passed, settles within the wake grace."""
    done, _ = await asyncio.wait({future}, timeout=WAKE_GRACE_S)
    return bool(done)


def after_waking(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> asyncio.TimerHandle:
    """``callback`` once the wake grace has passed: for a timer that has just fired, so that what waits
    in the sockets is read (and the timer cancelled) before ``callback`` judges."""
    return loop.call_later(WAKE_GRACE_S, callback)
