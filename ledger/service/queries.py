"""Reading the projections: task lists, timelines and waiting questions, scoped to who asks.

One set of queries behind the MCP read tools and resources (``ledger.mcp.read_tools``), the web timeline and the CLI. A
principal sees its own tasks; a principal named in ``LEDGER_AUDITORS`` (and the CLI, which reads
the store directly) sees everyone's. Store queries run off the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ledger.contract.events import iso, now_ms
from ledger.service.cursors import decode_cursor, encode_cursor
from ledger.service.errors import TaskNotFound
from projections.status import PendingElicitation, TaskRow
from projections.store import EVERYONE, Store

PAGE_SIZE = 50


def row_json(row: TaskRow) -> dict[str, Any]:
    """A task as the read side shows it: status, what it waits for, how it ended."""
    shown: dict[str, Any] = {
        "taskId": row.task_id, "tool": row.tool, "principal": row.principal, "status": row.status,
        "statusMessage": row.status_message, "createdAt": iso(row.created_at),
        "lastUpdatedAt": iso(row.last_updated_at),
        "pendingElicitations": [pending_json(p) for p in row.pending],
    }
    if row.due is not None:
        shown["due"] = iso(row.due)
    if row.result_json is not None:
        shown["result"] = json.loads(row.result_json)
    if row.error is not None:
        shown["error"] = row.error
    return shown


def pending_json(pending: PendingElicitation) -> dict[str, Any]:
    shown = {"elicitationId": pending.elicitation_id, "message": pending.message,
             "requestedSchema": json.loads(pending.requested_schema_json), "requestedAt": iso(pending.requested_at)}
    if pending.deadline is not None:
        shown["answerBy"] = iso(pending.deadline)
    return shown


class ReadSide:
    """``current`` gives a task's row as the server sees it now; the store (written in batches a
    moment later) answers the rest, after ``written`` wrote what the server has seen so far."""

    def __init__(self, store: Store, auditors: Iterable[str] = (),
                 current: Callable[[str], TaskRow | None] | None = None,
                 written: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.auditors = frozenset(auditors)
        self._current = current
        self._written = written

    def scope(self, principal: str | None) -> Any:
        return EVERYONE if principal in self.auditors else principal

    def visible(self, row: TaskRow | None, principal: str | None) -> bool:
        return row is not None and (principal in self.auditors or row.principal == principal)

    async def tasks(self, principal: str | None, *, status: str | None = None, tool: str | None = None,
                    cursor: str | None = None, limit: int = PAGE_SIZE) -> dict[str, Any]:
        after = decode_cursor(cursor) if cursor else None
        rows = await asyncio.to_thread(self.store.tasks, principal=self.scope(principal), status=status,
                                       tool=tool, after=after, limit=limit + 1)
        page: dict[str, Any] = {"tasks": [row_json(self._newest(row)) for row in rows[:limit]]}
        if len(rows) > limit:
            last = rows[limit - 1]
            page["nextCursor"] = encode_cursor((last.created_at, last.task_id))
        return page

    def _newest(self, row: TaskRow) -> TaskRow:
        current = self._current(row.task_id) if self._current is not None else None
        return current or row

    async def task(self, principal: str | None, task_id: str) -> dict[str, Any]:
        row = self._current(task_id) if self._current is not None else None
        if row is None:
            row = await asyncio.to_thread(self.store.row, task_id)
        if not self.visible(row, principal):
            raise TaskNotFound(task_id)
        return row_json(row)

    async def history(self, principal: str | None, task_id: str) -> dict[str, Any]:
        task = await self.task(principal, task_id)
        if self._written is not None:  # the timeline then holds at least what the task row shows
            await self._written()
        entries = await asyncio.to_thread(self.store.history, task_id)
        return {"task": task, "history": [entry.as_json() for entry in entries]}

    async def pending(self, principal: str | None, older_than_seconds: float = 0, limit: int = PAGE_SIZE, *,
                      answerable: bool = False) -> dict[str, Any]:
        """Questions waiting for an answer that the principal may see; ``answerable``: only its own tasks'
        (an auditor sees every principal's, and may answer none of theirs)."""
        found = await asyncio.to_thread(self.store.pending_older_than, int(older_than_seconds * 1000), now_ms(),
                                        principal if answerable else self.scope(principal), limit)
        return {"pendingElicitations": [
            {"taskId": row.task_id, "tool": row.tool, "principal": row.principal, **pending_json(pending)}
            for row, pending in found
        ]}


    async def inbox(self, principal: str | None, limit: int = PAGE_SIZE) -> dict[str, Any]:
        """The questions the principal's own tasks wait on (the ones it may answer), as the server
        sees them now: an answer the store has not caught up with yet is left out."""
        if self._written is not None:  # a question asked a moment ago is in the store too
            await self._written()
        found = await asyncio.to_thread(self.store.pending_older_than, 0, now_ms(), principal, limit)
        questions = []
        for stored, pending in found:
            row = self._newest(stored)
            if row.principal == principal and row.pending_elicitation(pending.elicitation_id) is not None:
                questions.append({"taskId": row.task_id, "tool": row.tool, "createdAt": iso(row.created_at),
                                  **pending_json(pending)})
        return {"questions": questions}


