"""The status projection: flows step by step, properties over arbitrary histories, replay == live."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ledger.contract.events import (
    CancelRequested,
    ElicitationExpired,
    ElicitationRequested,
    ResponseSubmitted,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskEvent,
    TaskExpired,
    TaskStarted,
)
from ledger.kafka.appender import EventLog
from ledger.kafka.reader import LogReader
from ledger.settings import Settings
from projections.history import entry, not_outstanding
from projections.status import TERMINAL, TIMED_OUT, StatusProjection, transition
from tests.support.factories import histories, sample


def fold(events: list[TaskEvent]) -> StatusProjection:
    projection = StatusProjection()
    for event in events:
        projection.apply(event)
    return projection


def test_approve_expense_flow() -> None:
    projection = StatusProjection()
    assert projection.apply(sample(TaskCreated, "t", principal="alice")).status == "working"
    assert projection.apply(sample(TaskStarted, "t")).status == "working"
    row = projection.apply(sample(ElicitationRequested, "t", elicitation_id="e1", message="Approve expense of 42?"))
    assert row.status == "input_required" and row.status_message == "Approve expense of 42?"
    assert [p.elicitation_id for p in row.pending] == ["e1"]
    row = projection.apply(sample(ResponseSubmitted, "t", elicitation_id="e1"))
    assert row.status == "working" and row.pending == ()
    row = projection.apply(sample(TaskCompleted, "t", result_json='{"content": [{"type": "text", "text": "approved 42"}]}'))
    assert row.status == "completed" and "approved 42" in row.result_json and row.principal == "alice"


def test_two_questions_in_sequence() -> None:
    projection = fold([
        sample(TaskCreated, "t", tool="plan_trip"),
        sample(ElicitationRequested, "t", elicitation_id="dates", sequence=0, message="Which dates?"),
        sample(ResponseSubmitted, "t", elicitation_id="dates"),
        sample(ElicitationRequested, "t", elicitation_id="confirm", sequence=1, message="Confirm?"),
    ])
    row = projection.get("t")
    assert row.status == "input_required" and [p.elicitation_id for p in row.pending] == ["confirm"]


def test_answer_to_an_elicitation_that_is_not_pending_changes_nothing() -> None:
    projection = fold([sample(TaskCreated, "t"), sample(ElicitationRequested, "t", elicitation_id="e1")])
    before = projection.get("t")
    assert projection.apply(sample(ResponseSubmitted, "t", elicitation_id="nope")) == before


def test_terminal_rows_do_not_move_and_expiry_fails_an_open_task() -> None:
    projection = fold([sample(TaskCreated, "t"), sample(CancelRequested, "t"), sample(TaskCancelled, "t")])
    cancelled = projection.get("t")
    assert cancelled.status == "cancelled" and cancelled.cancel_requested
    assert projection.apply(sample(TaskCompleted, "t")) == cancelled
    assert projection.apply(sample(TaskExpired, "t")) == cancelled
    waiting = fold([sample(TaskCreated, "w"), sample(ElicitationRequested, "w")])
    expired = waiting.apply(sample(TaskExpired, "w", ttl_ms=60_000))
    assert (expired.status, expired.pending) == ("failed", ())
    assert expired.error == expired.status_message == "Expired: the task's ttl of 60,000 ms ran out before it ended"


def test_a_question_that_times_out_leaves_the_task_working_and_a_later_answer_changes_nothing() -> None:
    asked = sample(ElicitationRequested, "t", elicitation_id="e1", message="Approve?", timeout_ms=90_000)
    projection = fold([sample(TaskCreated, "t"), asked])
    waiting = projection.get("t")
    assert waiting.pending[0].deadline == asked.occurred_at + 90_000
    assert waiting.status_message.startswith("Approve? (answer by ") and "or the task goes on" in waiting.status_message

    timed_out = sample(ElicitationExpired, "t", elicitation_id="e1", timeout_ms=90_000)
    row = projection.apply(timed_out)
    assert (row.status, row.pending, row.status_message) == ("working", (), None)
    assert row.answer("e1") == (("e1", TIMED_OUT, None, timed_out.event_id))
    late = sample(ResponseSubmitted, "t", elicitation_id="e1")
    assert projection.apply(late) == row
    because = not_outstanding(row, "e1")
    shown = entry(late, 0, 9, because)
    assert shown.kind == "ignored" and "deadline had passed" in shown.summary and timed_out.event_id in shown.summary
    assert entry(timed_out, 0, 8).kind == TIMED_OUT and "90 s" in entry(timed_out, 0, 8).summary


def test_a_timeout_after_the_answer_changes_nothing() -> None:
    projection = fold([sample(TaskCreated, "t"), sample(ElicitationRequested, "t", elicitation_id="e1", timeout_ms=1),
                       sample(ResponseSubmitted, "t", elicitation_id="e1")])
    answered = projection.get("t")
    assert projection.apply(sample(ElicitationExpired, "t", elicitation_id="e1", timeout_ms=1)) == answered
    assert answered.answer("e1").action == "accept"


def test_events_for_an_unknown_task_create_nothing() -> None:
    assert transition(None, sample(ResponseSubmitted, "ghost")) is None


@given(histories(), st.data())
def test_duplicates_anywhere_change_nothing(events: list[TaskEvent], data: st.DataObject) -> None:
    with_duplicates = list(events)
    for event in data.draw(st.lists(st.sampled_from(events), max_size=10)) if events else []:
        later = data.draw(st.integers(min_value=with_duplicates.index(event), max_value=len(with_duplicates)))
        with_duplicates.insert(later, event)
    assert fold(with_duplicates).rows == fold(events).rows


@given(histories())
def test_terminal_status_is_final(events: list[TaskEvent]) -> None:
    projection = StatusProjection()
    final: dict[str, str] = {}
    for event in events:
        row = projection.apply(event)
        if event.task_id in final:
            assert row is not None and row.status == final[event.task_id]
        elif row is not None and row.status in TERMINAL:
            final[event.task_id] = row.status


@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories())
async def test_replay_from_the_log_equals_the_live_fold(settings: Settings, event_log: EventLog, events: list[TaskEvent]) -> None:
    # Fresh task ids per example: the topic is shared by the examples of this test.
    run = uuid.uuid4().hex[:8]
    events = [e.model_copy(update={"task_id": f"{run}-{e.task_id}"}) for e in events]
    live = fold(events)
    await event_log.append_many(events)
    replayed = StatusProjection()
    async with LogReader(settings) as reader:
        async for batch in reader.catch_up():
            for record in batch:
                if record.event.task_id.startswith(run):
                    replayed.apply(record.event)
    assert replayed.rows == live.rows
