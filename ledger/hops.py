"""Where a task's time goes, hop by hop across processes: ``bench/flow.py --trace`` names a file in
``LEDGER_HOP_TRACE``, and every ledger process appends one line per hop to it (``CLOCK_MONOTONIC``
nanoseconds, which all processes of a machine share; the pid; the hop; the task id or ``-``).

Unset, ``hop`` does nothing: the hot paths pay one call, never a write.
"""

from __future__ import annotations

import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRACE_FILE = os.environ.get("LEDGER_HOP_TRACE") or None
_fd = os.open(TRACE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if TRACE_FILE else None
_pid = os.getpid()


def hop(name: str, task_id: str = "-") -> None:
    if _fd is not None:
        # One write of a short line to an O_APPEND file: lines of several processes never interleave.
        os.write(_fd, f"{time.monotonic_ns()} {_pid} {name} {task_id}\n".encode())


class HopsOfRequests:
    """ASGI middleware marking when a request reached the server and when it handed its answer to be sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hop("http.received")
        answered = False

        async def sending(message: Message) -> None:
            nonlocal answered
            if not answered and message["type"] == "http.response.body" and message.get("body"):
                answered = True
                hop("http.answered")
            await send(message)

        await self.app(scope, receive, sending)
