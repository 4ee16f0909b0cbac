"""Task status: the fold of a task's events into the row that ``tasks/get`` and ``tasks/list`` read.

``transition(row, event)`` is pure: the same events in the same order give the same row, which
is what lets ``ledger replay`` rebuild live state from the log. Events that make no sense for
the row (an answer to an elicitation that is not pending, anything after a terminal event) leave
it unchanged; the history projection records them as rejected.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from ledger.contract.events import (
    AttemptFailed,
    CancelRequested,
    ElicitationExpired,
    ElicitationRequested,
    PartitionClaimed,
    ProgressReported,
    RequestRejected,
    ResponseSubmitted,
    StepRecorded,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskEvent,
    TaskExpired,
    TaskFailed,
    TaskStarted,
    TimerFired,
    TimerSet,
    iso,
    starts_new_task,
)

Status = Literal["working", "input_required", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class PendingElicitation(NamedTuple):
    """A question the task waits on. Named tuples, like ``TaskRow``: a row is written to the store
    as JSON in one call of the C encoder, which writes tuples as arrays."""

    elicitation_id: str
    mode: str
    message: str
    requested_schema_json: str
    url: str | None
    requested_at: int
    deadline: int | None = None  # Unix ms when it stops waiting for an answer; None: never


TIMED_OUT = "timed out"  # an ``Answer``'s action when the question's deadline passed first


class Answer(NamedTuple):
    """The answer that resolved an elicitation: the first in log order, whichever server took it, or
    its deadline passing (action ``TIMED_OUT``)."""

    elicitation_id: str
    action: str
    content_json: str | None
    event_id: str  # of the ResponseSubmitted (or ElicitationExpired) that is the answer


class TaskRow(NamedTuple):
    """One task's state. A named tuple rather than a frozen dataclass: every event of a replay
    makes a new row, and ``_replace`` costs a third of ``dataclasses.replace``."""

    task_id: str
    principal: str | None
    tool: str
    status: Status
    created_at: int
    last_updated_at: int
    ttl_ms: int | None
    poll_interval_ms: int | None
    status_message: str | None = None
    pending: tuple[PendingElicitation, ...] = ()
    answers: tuple[Answer, ...] = ()
    cancel_requested: bool = False
    result_json: str | None = None
    is_error: bool = False
    error: str | None = None
    wakes_at: int | None = None  # while the tool sleeps, or waits for its next attempt: when it goes on (Unix ms)
    request_digest: str | None = None  # a keyed call's tool and arguments, which a repeat of it must match

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def due(self) -> int | None:
        """When the open task's wait ends on its own (Unix ms): it wakes, or its question's deadline passes."""
        if self.terminal:
            return None
        if self.wakes_at is not None:
            return self.wakes_at
        return min((p.deadline for p in self.pending if p.deadline is not None), default=None)

    def changed(self, **changes: Any) -> TaskRow:
        """A copy with ``changes``: ``_replace`` without its checks, at half the cost (every event of a
        replay makes a new row)."""
        fields = list(self)
        for name, value in changes.items():
            fields[_FIELD_AT[name]] = value
        return _new_tuple(TaskRow, fields)

    def answer(self, elicitation_id: str) -> Answer | None:
        return next((a for a in self.answers if a.elicitation_id == elicitation_id), None)

    def pending_elicitation(self, elicitation_id: str) -> PendingElicitation | None:
        return next((p for p in self.pending if p.elicitation_id == elicitation_id), None)


def transition(row: TaskRow | None, event: TaskEvent) -> TaskRow | None:
    """The row after ``event``; ``None`` while the task does not exist."""
    if row is None:
        if type(event) is TaskCreated:
            return TaskRow(
                task_id=event.task_id,
                principal=event.principal,
                tool=event.tool,
                status="working",
                created_at=event.occurred_at,
                last_updated_at=event.occurred_at,
                ttl_ms=event.ttl_ms,
                poll_interval_ms=event.poll_interval_ms,
                request_digest=event.request_digest,
            )
        return None
    if row.status in TERMINAL:
        return row
    rule = _RULES.get(type(event))
    if rule is None:
        raise TypeError(f"status projection has no rule for {type(event).__name__}")
    return rule(row, event)


def _unchanged(row: TaskRow, event: TaskEvent) -> TaskRow:
    return row


def _touched(row: TaskRow, event: TaskEvent) -> TaskRow:
    return row.changed(last_updated_at=event.occurred_at)


def _asked(row: TaskRow, event: ElicitationRequested) -> TaskRow:
    if any(p.elicitation_id == event.elicitation_id for p in row.pending):
        return row
    pending = row.pending + (
        PendingElicitation(event.elicitation_id, event.mode, event.message, event.requested_schema_json, event.url,
                           event.occurred_at, event.deadline),
    )
    return row.changed(status="input_required", status_message=_waiting_message(pending[-1]), pending=pending,
                       last_updated_at=event.occurred_at)


def _waiting_message(pending: PendingElicitation) -> str:
    """The status message of a task waiting on ``pending``: the question, and its deadline if it has one."""
    if pending.deadline is None:
        return pending.message
    return f"{pending.message} (answer by {iso(pending.deadline)}, or the task goes on without an answer)"


def _answered(row: TaskRow, event: ResponseSubmitted) -> TaskRow:
    return _resolved(row, event, Answer(event.elicitation_id, event.action, event.content_json, event.event_id))


def _timed_out(row: TaskRow, event: ElicitationExpired) -> TaskRow:
    return _resolved(row, event, Answer(event.elicitation_id, TIMED_OUT, None, event.event_id))


def _resolved(row: TaskRow, event: TaskEvent, answer: Answer) -> TaskRow:
    remaining = tuple(p for p in row.pending if p.elicitation_id != answer.elicitation_id)
    if len(remaining) == len(row.pending):
        return row
    answers = row.answers + (answer,)
    if remaining:
        return row.changed(pending=remaining, answers=answers, status_message=_waiting_message(remaining[0]),
                           last_updated_at=event.occurred_at)
    return row.changed(status="working", status_message=None, pending=(), answers=answers,
                       last_updated_at=event.occurred_at)


def _slept(row: TaskRow, event: TimerSet) -> TaskRow:
    return row.changed(status_message=f"Sleeping until {iso(event.due)}", wakes_at=event.due,
                       last_updated_at=event.occurred_at)


def _attempt_failed(row: TaskRow, event: AttemptFailed) -> TaskRow:
    return row.changed(status_message=f"Attempt {event.attempt} failed ({event.error_type}: {event.message}); the "
                                      f"next starts at {iso(event.retry_at)}",
                       wakes_at=event.retry_at, last_updated_at=event.occurred_at)


def _started(row: TaskRow, event: TaskStarted) -> TaskRow:
    if row.wakes_at is None:
        return _touched(row, event)
    return row.changed(status_message=None, wakes_at=None, last_updated_at=event.occurred_at)  # the next attempt


def _woke(row: TaskRow, event: TimerFired) -> TaskRow:
    return row.changed(status_message=None, wakes_at=None, last_updated_at=event.occurred_at)


def _progressed(row: TaskRow, event: ProgressReported) -> TaskRow:
    return row.changed(status_message=event.message or row.status_message, last_updated_at=event.occurred_at)


def _cancel_requested(row: TaskRow, event: CancelRequested) -> TaskRow:
    return row.changed(cancel_requested=True, last_updated_at=event.occurred_at)


def _completed(row: TaskRow, event: TaskCompleted) -> TaskRow:
    return row.changed(status="completed", status_message=None, pending=(), result_json=event.result_json,
                       is_error=event.is_error, last_updated_at=event.occurred_at)


def _failed(row: TaskRow, event: TaskFailed) -> TaskRow:
    return row.changed(status="failed", status_message=event.message, pending=(), error=event.message,
                       last_updated_at=event.occurred_at)


def _cancelled(row: TaskRow, event: TaskCancelled) -> TaskRow:
    return row.changed(status="cancelled", status_message=event.reason, pending=(), last_updated_at=event.occurred_at)


def _expired(row: TaskRow, event: TaskExpired) -> TaskRow:
    expired = expiry_message(event.ttl_ms)
    return row.changed(status="failed", status_message=expired, pending=(), error=expired,
                       last_updated_at=event.occurred_at)


# Each event type's rule for an existing, open task; looked up by type, since a replay folds every event.
_RULES: dict[type[TaskEvent], Callable[[TaskRow, Any], TaskRow]] = {
    TaskCreated: _unchanged,
    RequestRejected: _unchanged,
    PartitionClaimed: _unchanged,
    TaskStarted: _started,
    StepRecorded: _touched,
    ElicitationRequested: _asked,
    ResponseSubmitted: _answered,
    ElicitationExpired: _timed_out,
    TimerSet: _slept,
    TimerFired: _woke,
    AttemptFailed: _attempt_failed,
    ProgressReported: _progressed,
    CancelRequested: _cancel_requested,
    TaskCompleted: _completed,
    TaskFailed: _failed,
    TaskCancelled: _cancelled,
    TaskExpired: _expired,
}


_FIELD_AT = {name: index for index, name in enumerate(TaskRow._fields)}
_new_tuple = tuple.__new__


def expiry_message(ttl_ms: int) -> str:
    return f"Expired: the task's ttl of {ttl_ms:,} ms ran out before it ended"


class StatusProjection:
    """Every task's row, kept by folding events; de-duplicates on ``event_id``.

    Unbounded by default. With ``capacity`` it keeps only the most recently used rows and asks
    ``lookup`` (the projection store, which holds every row) for the others, and it remembers
    only the last ``remembered_ids`` event ids: a producer retry's copy lands right after the
    original, and the transitions leave a row unchanged by a repeat anyway.
    """

    def __init__(self, *, capacity: int | None = None, lookup: Callable[[str], TaskRow | None] | None = None,
                 remembered_ids: int | None = None) -> None:
        if capacity is not None and lookup is None:
            raise ValueError("a bounded projection needs a lookup for the rows it no longer holds")
        # Bounded, in least- to most-recently-used order: an OrderedDict, because deleting a dict's
        # first item leaves a hole that every later next(iter()) walks over (1.3 s in a million
        # events). Unbounded, a dict: an OrderedDict takes 2.6 times the memory.
        self.rows: dict[str, TaskRow] = OrderedDict() if capacity is not None else {}
        self.capacity = capacity
        self._lookup = lookup
        self._applied: OrderedDict[str, None] = OrderedDict()
        self._remembered_ids = remembered_ids

    def apply(self, event: TaskEvent) -> TaskRow | None:
        """Fold one event in; returns the task's row afterwards."""
        row = self.get(event.task_id, look_up=not starts_new_task(event))
        if self.seen(event.event_id):
            return row
        return self.fold(row, event)

    def fold(self, row: TaskRow | None, event: TaskEvent) -> TaskRow | None:
        """Fold in ``event``, not applied before, given the task's row as ``get`` just returned it
        (so already the most recently used); returns the row afterwards."""
        applied = self._applied
        applied[event.event_id] = None
        if self._remembered_ids is not None and len(applied) > self._remembered_ids:
            applied.popitem(last=False)
        after = transition(row, event)
        if after is not row and after is not None:
            self._keep(event.task_id, after)
        return after

    def get(self, task_id: str, *, look_up: bool = True) -> TaskRow | None:
        """The task's row; ``look_up=False`` skips the store (an unkeyed created event's task is new: task ids
        are fresh UUIDs, and a retried copy of the event is caught by its event id)."""
        row = self.rows.get(task_id)
        if row is not None:
            if self.capacity is not None:
                self.rows.move_to_end(task_id)  # an OrderedDict when bounded
            return row
        if self._lookup is None or not look_up:
            return None
        row = self._lookup(task_id)
        if row is not None:
            self._keep(task_id, row)
        return row

    def _keep(self, task_id: str, row: TaskRow) -> None:
        """Hold ``row``: a new task's goes last (most recently used); a held task's keeps the place
        ``get`` just gave it, the last."""
        rows = self.rows
        rows[task_id] = row
        if self.capacity is not None and len(rows) > self.capacity:
            rows.popitem(last=False)

    def seen(self, event_id: str) -> bool:
        """Whether an event with this id was applied (a producer retry writes an event twice)."""
        return event_id in self._applied
