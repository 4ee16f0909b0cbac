"""Task history: every event of a task as one timeline entry, with where it sits on the log.

``entry(event, partition, offset)`` is pure. The timeline is the audit trail: what was asked,
who answered what through which protocol path, which answers were refused and why, and how the
task ended. Entries are kept in log order; a producer retry's duplicate (same ``event_id``)
is the same entry.

The store keeps an entry as the record was written (``Recorded``) and renders it when read: a
replay folds a million events and a person reads a few timelines, so the rendering (summary,
detail JSON) is paid for by the reads.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from ledger.contract.codec import Codec
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
)
from ledger.kafka.records import LogRecord
from projections.status import TIMED_OUT, TaskRow

DUPLICATE_PREFIX = "duplicate"
IGNORED = "ignored"
# Why an answer was not taken, as the history keeps it beside a fenced event's owner.
ANSWERED_FIRST = "answered-first:"
TIMED_OUT_FIRST = "timed-out-first:"
TASK_ENDED = "task-ended"
REPEATED_CALL = "repeated-call"
NEVER_ASKED = "not-asked"

# json.dumps builds an encoder per call when given separators; a replay encodes every event.
compact_json = json.JSONEncoder(separators=(",", ":")).encode


class Entry(NamedTuple):
    """One timeline entry."""

    event_id: str
    task_id: str
    partition: int
    offset: int
    occurred_at: int
    kind: str
    actor: str
    principal: str | None
    protocol: str | None
    elicitation_id: str | None
    summary: str
    detail_json: str

    def as_json(self) -> dict[str, Any]:
        return {
            "eventId": self.event_id, "partition": self.partition, "offset": self.offset,
            "occurredAt": self.occurred_at, "kind": self.kind, "actor": self.actor, "principal": self.principal,
            "protocol": self.protocol, "elicitationId": self.elicitation_id, "summary": self.summary,
            "detail": json.loads(self.detail_json),
        }


# A history entry as the store keeps it: (partition, offset, task_id, ignored_because, value), where
# ``value`` is the record's bytes as written and ``ignored_because`` why no fold counts the event (the
# partition's owner when another worker wrote it, or why an answer was not taken). A plain tuple: the
# projector makes one per event of a replay.
Recorded = tuple[int, int, str, str | None, bytes]


def recorded(record: LogRecord, ignored_because: str | None = None) -> Recorded:
    return record.partition, record.offset, record.event.task_id, ignored_because, record.value


def not_outstanding(row: TaskRow | None, elicitation_id: str) -> str:
    """Why an answer to ``elicitation_id`` changed nothing, as the history keeps it."""
    answer = row.answer(elicitation_id) if row is not None else None
    if answer is not None:
        return f"{TIMED_OUT_FIRST if answer.action == TIMED_OUT else ANSWERED_FIRST}{answer.event_id}"
    return TASK_ENDED if row is not None and row.terminal else NEVER_ASKED


def render(stored: Recorded, codec: Codec) -> Entry:
    """The timeline entry of a stored one."""
    partition, offset, _, ignored_because, value = stored
    return entry(codec.decode(value), partition, offset, ignored_because)


def entry(event: TaskEvent, partition: int, offset: int, ignored_because: str | None = None) -> Entry:
    """The timeline entry of ``event``. ``ignored_because`` is set for an event no fold counts: the
    worker that owned the partition when another worker wrote it, or why an answer was not taken
    (``not_outstanding``); the entry is then kept as ``ignored``, saying why."""
    kind, summary = describe(event)
    if ignored_because is not None:
        kind, summary = IGNORED, f"{_why_ignored(event, partition, ignored_because)}: {kind} {summary}"
    payload = event.payload()
    return Entry(event.event_id, event.task_id, partition, offset, event.occurred_at, kind, event.actor,
                 event.principal, payload.get("protocol"), payload.get("elicitation_id"), summary,
                 compact_json(payload))


def _why_ignored(event: TaskEvent, partition: int, because: str) -> str:
    if because.startswith(ANSWERED_FIRST):
        return f"not taken: another answer to this question came first (event {because[len(ANSWERED_FIRST):]})"
    if because.startswith(TIMED_OUT_FIRST):
        return f"not taken: the question's deadline had passed (event {because[len(TIMED_OUT_FIRST):]})"
    if because == TASK_ENDED:
        return "not taken: the task had ended"
    if because == REPEATED_CALL:
        return "not taken: a repeat of the keyed call that created the task"
    if because == NEVER_ASKED:
        return "not taken: the task was not waiting on this question"
    return f"{event.actor} no longer owned partition {partition} ({because} had claimed it)"


def describe(event: TaskEvent) -> tuple[str, str]:
    """The entry's kind and a one-line human summary."""
    match event:
        case TaskCreated():
            keyed = "" if event.idempotency_key is None else f" key {_short(event.idempotency_key, 60)!r}"
            return "created", f"{event.tool}({_short(event.arguments_json)}){keyed}"
        case TaskStarted():
            return "started", f"attempt {event.attempt}"
        case ElicitationRequested():
            deadline = "" if event.timeout_ms is None else f" (answer within {_duration(event.timeout_ms)})"
            return "asked", f"#{event.sequence} {event.message}{deadline}"
        case ElicitationExpired():
            return TIMED_OUT, f"no answer within {_duration(event.timeout_ms)}: the task goes on without one"
        case ResponseSubmitted():
            content = f" {_short(event.content_json)}" if event.content_json else ""
            return "answered", f"{event.action}{content}"
        case RequestRejected():
            kind = "duplicate" if event.reason.startswith(DUPLICATE_PREFIX) else "refused"
            return kind, f"{event.operation}: {event.reason}"
        case ProgressReported():
            total = f"/{event.total:g}" if event.total is not None else ""
            message = f" {event.message}" if event.message else ""
            return "progress", f"{event.progress:g}{total}{message}"
        case StepRecorded():
            return "step", f"#{event.sequence} {event.name} -> {_short(event.result_json)}"
        case CancelRequested():
            return "cancel requested", event.reason or ""
        case TaskCompleted():
            return "completed", ("error: " if event.is_error else "") + _result_text(event.result_json)
        case TaskFailed():
            return "failed", f"{event.error_type}: {event.message}"
        case TaskCancelled():
            return "cancelled", event.reason or ""
        case TaskExpired():
            return "expired", f"ttl {event.ttl_ms} ms"
        case PartitionClaimed():
            return "claimed", f"partition {event.partition} by {event.actor}"
        case TimerSet():
            return "sleeps", f"#{event.sequence} until {iso(event.due)} ({_duration(event.duration_ms)})"
        case TimerFired():
            return "woke", f"#{event.sequence}"
        case AttemptFailed():
            return "attempt failed", (f"#{event.attempt} {event.error_type}: {_short(event.message)}; the next at "
                                      f"{iso(event.retry_at)} (in {_duration(event.retry_delay_ms)})")
    raise TypeError(f"history has no rule for {type(event).__name__}")


def _duration(ms: int) -> str:
    """``ms`` as a person reads a deadline: 90 s, 45 min, 48 h, 3 d."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000)):
        if ms >= size and ms % size == 0 or ms >= 2 * size:
            return f"{ms / size:g} {unit}" if ms % size == 0 else f"{ms / size:.1f} {unit}"
    return f"{ms / 1000:g} s"


def _result_text(result_json: str) -> str:
    try:
        result = json.loads(result_json)
        texts = [c.get("text", "") for c in result.get("content", []) if c.get("type") == "text"]
    except (ValueError, AttributeError):
        return _short(result_json)
    return _short(" ".join(texts)) if texts else _short(result_json)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
