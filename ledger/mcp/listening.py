"""``subscriptions/listen`` with ``notifications.taskIds`` (2026-07-28, tasks extension).

A client names the tasks it wants to follow; the server acknowledges the ones that are the caller's
(others are left out without a word, as if they did not exist), sends each one's state as
``notifications/tasks`` at once and then on every change, and ends the stream when all of them have
ended. A server's live view follows every partition of the log, so what any worker or server did
reaches a listener on any server.

Bounds: one stream follows at most ``MAX_TASK_IDS`` tasks and keeps only the newest unsent state of
each (a burst of changes to a task sends its latest state once), so it holds at most that many rows;
one principal holds at most ``LEDGER_PRINCIPAL_STREAMS`` streams on a server (-32000 beyond, so that
it cannot take the others' share), and a server serves at most ``MAX_STREAMS`` streams at once
(-32603 before the acknowledgement beyond).
No ``notifications/progress`` or ``notifications/message`` go on these streams, as the spec requires.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import require_client_extension
from mcp.shared.exceptions import MCPError

from ledger.mcp.extension_tasks import TASKS_EXTENSION, detailed_task_json
from ledger.mcp.wire import INTERNAL_ERROR, INVALID_PARAMS, RATE_LIMITED, principal_of
from ledger.service.errors import TaskNotFound
from ledger.service.live_view import LiveView
from ledger.service.tasks import TaskService
from projections.status import TaskRow

MAX_TASK_IDS = 1_000
MAX_STREAMS = 10_000
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


class TaskStream:
    """One listen stream's tasks: the newest state of each not sent yet."""

    __slots__ = ("task_ids", "unsent", "open", "changed")

    def __init__(self, rows: list[TaskRow]) -> None:
        self.task_ids = frozenset(row.task_id for row in rows)
        self.unsent: dict[str, TaskRow] = {row.task_id: row for row in rows}
        self.open = {row.task_id for row in rows if not row.terminal}
        self.changed = asyncio.Event()
        self.changed.set()

    def offer(self, row: TaskRow) -> None:
        self.unsent[row.task_id] = row
        self.changed.set()


class TaskListeners:
    """The listen streams of one server, fed by its live view."""

    def __init__(self, service: TaskService, view: LiveView) -> None:
        self.service = service
        self._by_task: dict[str, set[TaskStream]] = {}
        self._streams = 0
        self._by_principal: Counter[str | None] = Counter()
        self.per_principal = service.settings.principal_streams
        view.listen(self._changed)

    def _changed(self, before: TaskRow | None, after: TaskRow | None) -> None:
        if after is None:
            return
        for stream in self._by_task.get(after.task_id, ()):
            stream.offer(after)

    async def listen(self, ctx: ServerRequestContext[Any, Any],
                     params: types.SubscriptionsListenRequestParams) -> types.SubscriptionsListenResult:
        subscription_id = ctx.request_id
        task_ids = _task_ids(params.notifications)
        if task_ids is not None:
            require_client_extension(ctx, TASKS_EXTENSION)
        principal = principal_of(ctx)
        if self._by_principal[principal] >= self.per_principal:
            raise MCPError(RATE_LIMITED, f"You already have {self.per_principal} listen streams open on this server "
                           "(LEDGER_PRINCIPAL_STREAMS); close one first")
        if self._streams >= MAX_STREAMS:
            raise MCPError(INTERNAL_ERROR, f"This server already serves {MAX_STREAMS} listen streams; retry later")
        self._streams += 1  # before the first await: streams arriving together count against the bounds
        self._by_principal[principal] += 1
        try:
            await self._settle_unknown(task_ids or [])
            # From here to the subscription nothing awaits, so no change of these rows can slip between.
            stream = TaskStream(self._own(task_ids or [], principal_of(ctx)))
            meta = {SUBSCRIPTION_ID: subscription_id}
            self._subscribe(stream)
            try:
                # Only task ids are honoured: the tools, prompts and resources lists never change (the
                # server advertises no listChanged) and resource subscriptions are not served.
                honored = {} if task_ids is None else {"taskIds": list(stream.unsent)}  # in the order asked
                await ctx.session.send_notification(
                    types.SubscriptionsAcknowledgedNotification(params=types.SubscriptionsAcknowledgedNotificationParams(
                        notifications=types.SubscriptionFilter.model_validate(honored), _meta=meta)),
                    related_request_id=subscription_id)
                await self._stream(ctx, stream, meta)
            finally:
                self._unsubscribe(stream)
        finally:
            self._streams -= 1
            self._by_principal[principal] -= 1
            if not self._by_principal[principal]:
                del self._by_principal[principal]
        return types.SubscriptionsListenResult(_meta=meta)

    async def _settle_unknown(self, task_ids: list[str]) -> None:
        """Read the log as it is now once, if a task is not in this server's view yet (another server may
        have created it a moment ago)."""
        view = self.service.view
        if any([await view.load(task_id) is None for task_id in task_ids]):
            await view.settle(self.service.settings.read_timeout_ms / 1000)

    def _own(self, task_ids: list[str], principal: str | None) -> list[TaskRow]:
        rows = []
        for task_id in dict.fromkeys(task_ids):
            try:
                rows.append(self.service.get(task_id, principal))
            except TaskNotFound:
                continue
        return rows

    async def _stream(self, ctx: ServerRequestContext[Any, Any], stream: TaskStream, meta: dict[str, Any]) -> None:
        """Send each task's state, then each change, until every task on the stream has ended."""
        while True:
            await stream.changed.wait()
            stream.changed.clear()
            unsent, stream.unsent = stream.unsent, {}
            for row in unsent.values():
                task = detailed_task_json(row)
                del task["resultType"]
                await ctx.session.send_notification(
                    types.Notification[dict[str, Any], str](method="notifications/tasks",
                                                            params={**task, "_meta": meta}),
                    related_request_id=meta[SUBSCRIPTION_ID])
                if row.terminal:
                    stream.open.discard(row.task_id)
            if not stream.open:
                return

    def _subscribe(self, stream: TaskStream) -> None:
        for task_id in stream.task_ids:
            self._by_task.setdefault(task_id, set()).add(stream)

    def _unsubscribe(self, stream: TaskStream) -> None:
        for task_id in stream.task_ids:
            streams = self._by_task.get(task_id)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._by_task[task_id]


def _task_ids(requested: types.SubscriptionFilter) -> list[str] | None:
    """The ``taskIds`` of a listen filter (an extension field), checked; None when not asked for."""
    task_ids = (requested.model_extra or {}).get("taskIds")
    if task_ids is None:
        return None
    if not isinstance(task_ids, list) or not all(isinstance(task_id, str) for task_id in task_ids):
        raise MCPError(INVALID_PARAMS, "notifications.taskIds must be a list of task id strings")
    if len(task_ids) > MAX_TASK_IDS:
        raise MCPError(INVALID_PARAMS, f"notifications.taskIds lists {len(task_ids)} tasks; one stream follows "
                       f"at most {MAX_TASK_IDS}")
    return task_ids

