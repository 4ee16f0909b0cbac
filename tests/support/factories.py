"""Hypothesis strategies and plain builders for every event type."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import strategies as st

from ledger.contract.codec import Codec
from ledger.contract.events import (
    EVENT_TYPES,
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
)
from ledger.kafka.records import LogRecord

text = st.text(max_size=40)
optional_text = st.none() | text
json_text = st.dictionaries(st.text(max_size=8), st.integers() | st.booleans() | st.text(max_size=8), max_size=3).map(json.dumps)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)

envelope = {
    "event_id": st.uuids().map(str),
    "task_id": st.text(min_size=1, max_size=40),
    "occurred_at": st.integers(min_value=0, max_value=2**45),
    "principal": optional_text,
    "actor": st.text(min_size=1, max_size=30),
}

payloads: dict[type[TaskEvent], dict[str, st.SearchStrategy[Any]]] = {
    TaskCreated: {"tool": text, "arguments_json": json_text, "ttl_ms": st.none() | longs,
                  "poll_interval_ms": st.none() | longs, "protocol": optional_text,
                  "idempotency_key": optional_text, "request_digest": optional_text},
    TaskStarted: {"attempt": st.integers(min_value=1, max_value=2**31 - 1)},
    ElicitationRequested: {"elicitation_id": text, "sequence": st.integers(min_value=0, max_value=2**31 - 1),
                           "mode": st.sampled_from(["form", "url"]), "message": text,
                           "requested_schema_json": json_text, "url": optional_text,
                           "timeout_ms": st.none() | st.integers(min_value=0, max_value=2**62)},
    ResponseSubmitted: {"elicitation_id": text, "action": st.sampled_from(["accept", "decline", "cancel"]),
                        "content_json": st.none() | json_text, "protocol": optional_text},
    ProgressReported: {"progress": finite, "total": st.none() | finite, "message": optional_text},
    StepRecorded: {"name": text, "sequence": st.integers(min_value=0, max_value=2**31 - 1), "result_json": json_text},
    TaskCompleted: {"result_json": json_text, "is_error": st.booleans()},
    TaskFailed: {"error_type": text, "message": text},
    CancelRequested: {"reason": optional_text, "protocol": optional_text},
    TaskCancelled: {"reason": optional_text},
    TaskExpired: {"ttl_ms": longs},
    RequestRejected: {"operation": text, "elicitation_id": optional_text, "reason": text,
                      "payload_json": st.none() | json_text, "protocol": optional_text},
    PartitionClaimed: {"partition": st.integers(min_value=0, max_value=2**31 - 1)},
    ElicitationExpired: {"elicitation_id": text, "timeout_ms": st.integers(min_value=0, max_value=2**62)},
    TimerSet: {"sequence": st.integers(min_value=0, max_value=2**31 - 1),
               "duration_ms": st.integers(min_value=0, max_value=2**62)},
    TimerFired: {"sequence": st.integers(min_value=0, max_value=2**31 - 1)},
    AttemptFailed: {"attempt": st.integers(min_value=1, max_value=2**31 - 1), "error_type": text, "message": text,
                    "retry_delay_ms": st.integers(min_value=0, max_value=2**62)},
}
assert set(payloads) == set(EVENT_TYPES.values()), "every event type needs a strategy"


def events_of(cls: type[TaskEvent]) -> st.SearchStrategy[TaskEvent]:
    return st.builds(cls, **envelope, **payloads[cls])


any_event = st.one_of(*(events_of(cls) for cls in payloads))


def sample(cls: type[TaskEvent], task_id: str, **fields: Any) -> TaskEvent:
    """A valid event of ``cls`` for ``task_id`` with plain example values."""
    defaults: dict[type[TaskEvent], dict[str, Any]] = {
        TaskCreated: {"tool": "approve_expense", "arguments_json": '{"amount": 42.0, "description": "taxi"}'},
        TaskStarted: {"attempt": 1},
        ElicitationRequested: {"elicitation_id": "e1", "sequence": 0, "message": "Approve?",
                               "requested_schema_json": '{"type": "object"}'},
        ResponseSubmitted: {"elicitation_id": "e1", "action": "accept", "content_json": '{"approved": true}'},
        ProgressReported: {"progress": 1.0, "total": 3.0},
        StepRecorded: {"name": "charge", "sequence": 0, "result_json": "{}"},
        TaskCompleted: {"result_json": '{"content": []}'},
        TaskFailed: {"error_type": "ValueError", "message": "boom"},
        CancelRequested: {},
        TaskCancelled: {},
        TaskExpired: {"ttl_ms": 1000},
        RequestRejected: {"operation": "respond", "reason": "unknown elicitation"},
        PartitionClaimed: {"partition": 0},
        ElicitationExpired: {"elicitation_id": "e1", "timeout_ms": 60_000},
        TimerSet: {"sequence": 0, "duration_ms": 60_000},
        TimerFired: {"sequence": 0},
        AttemptFailed: {"attempt": 1, "error_type": "ConnectionError", "message": "refused", "retry_delay_ms": 1000},
    }
    return cls(task_id=task_id, **{"actor": "test:pytest", "event_id": str(uuid.uuid4()), **defaults[cls], **fields})


# Arbitrary histories: every event type, on a few tasks and elicitation ids, written by a server or
# by one of two workers that claim the partition in turn, in any order.
task_ids = st.sampled_from(["task-a", "task-b", "task-c"])
elicitation_ids = st.sampled_from(["e0", "e1"])
actors = st.sampled_from(["server:s1", "worker:w1", "worker:w2"])


@st.composite
def histories(draw: st.DrawFn) -> list[TaskEvent]:
    steps = draw(st.lists(st.tuples(st.sampled_from(sorted(EVENT_TYPES)), task_ids, elicitation_ids, actors),
                          max_size=40))
    events = []
    for clock, (name, task_id, elicitation_id, actor) in enumerate(steps):
        cls = EVENT_TYPES[name]
        extra = {"elicitation_id": elicitation_id} if "elicitation_id" in cls.model_fields else {}
        events.append(sample(cls, task_id, occurred_at=1_000 + clock, actor=actor, **extra))
    return events


_codec = Codec()


def written(partition: int, offset: int, event: TaskEvent) -> LogRecord:
    """``event`` as a reader hands it out from ``partition`` at ``offset``: with its bytes as written."""
    return LogRecord(partition, offset, event, _codec.encode(event))


def plan_trip(task_id: str) -> list:
    return [
        sample(TaskCreated, task_id, tool="plan_trip", arguments_json='{"destination":"Rome"}', protocol="2025-11-25"),
        sample(TaskStarted, task_id),
        sample(ElicitationRequested, task_id, elicitation_id="dates", sequence=0, message="When do you want to go?"),
        sample(RequestRejected, task_id, elicitation_id="dates", reason="content does not match the requested schema"),
        sample(ResponseSubmitted, task_id, elicitation_id="dates", content_json='{"nights":4}',
               protocol="2026-07-28/tasks"),
        sample(ElicitationRequested, task_id, elicitation_id="confirm", sequence=1, message="Book 4 nights?"),
        sample(ResponseSubmitted, task_id, elicitation_id="confirm", content_json='{"confirm":true}',
               protocol="2026-07-28/mrtr"),
        sample(TaskCompleted, task_id, result_json='{"content":[{"type":"text","text":"booked Rome for 4 nights"}]}'),
    ]
