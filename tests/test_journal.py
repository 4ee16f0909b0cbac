"""The worker's journal: what it folds in, what it ignores, and what it gives back."""

from __future__ import annotations

from ledger.contract.events import (
    ElicitationExpired,
    ElicitationRequested,
    ResponseSubmitted,
    StepRecorded,
    TaskCompleted,
    TaskCreated,
    TaskStarted,
)
from ledger.engine.journal import Journal

TASK = {"task_id": "task-1", "principal": "alice", "actor": "worker:w1"}


def created() -> TaskCreated:
    return TaskCreated(task_id="task-1", principal="alice", actor="server:s1", tool="plan_trip",
                       arguments_json='{"city": "Oslo"}', protocol="mcp-2026-07-28/tasks")


def asked(sequence: int, timeout_ms: int | None = None) -> ElicitationRequested:
    return ElicitationRequested(**TASK, elicitation_id=f"e{sequence}", sequence=sequence, message=f"question {sequence}?",
                                requested_schema_json='{"type":"object"}', timeout_ms=timeout_ms)


def answered(sequence: int, action: str = "accept") -> ResponseSubmitted:
    return ResponseSubmitted(task_id="task-1", principal="alice", actor="server:s1", elicitation_id=f"e{sequence}",
                             action=action, content_json='{"ok":true}' if action == "accept" else None)


def test_a_journal_gives_back_the_events_it_keeps() -> None:
    first = created()
    journal = Journal(first, partition=3, offset=17)
    step = StepRecorded(**TASK, name="book", sequence=0, result_json='{"ref":"X1"}')
    question, answer, second_question = asked(0), answered(0), asked(1)
    for event in (TaskStarted(**TASK, attempt=1), question, answer, step, second_question):
        assert journal.apply(event)

    assert (journal.task_id, journal.principal, journal.tool) == ("task-1", "alice", "plan_trip")
    assert (journal.partition, journal.offset, journal.attempts) == (3, 17, 1)
    assert journal.arguments_json == first.arguments_json
    for sequence, asked_event in enumerate((question, second_question)):
        assert journal.elicitation(sequence) == (asked_event.elicitation_id, asked_event.message,
                                                 asked_event.requested_schema_json, asked_event.occurred_at, None)
        assert journal.asked_at(asked_event.elicitation_id) == asked_event.occurred_at
    assert journal.elicitation(2) is None
    assert journal.response("e0") == answer and journal.response("e1") is None
    assert journal.step(0) == step and journal.step(1) is None
    assert journal.waiting and not journal.ended


def test_a_task_waits_from_its_question_until_the_answer() -> None:
    journal = Journal(created(), 0, 0)
    assert not journal.waiting
    journal.apply(asked(0))
    assert journal.waiting
    journal.apply(answered(0))
    assert not journal.waiting


def test_repeats_and_events_the_fold_ignores_change_nothing() -> None:
    first = created()
    journal = Journal(first, 0, 0)
    started, question, answer = TaskStarted(**TASK, attempt=2), asked(0), answered(0)
    for event in (started, question, answer):
        assert journal.apply(event)
        assert not journal.apply(event)  # a producer retry's copy, or the worker's own write read back

    assert not journal.apply(first)
    assert not journal.apply(TaskStarted(**TASK, attempt=1))  # an older attempt
    assert not journal.apply(asked(3))  # out of sequence
    assert not journal.apply(answered(7))  # to a question never asked
    assert not journal.apply(answered(0, "decline"))  # the first answer in log order wins
    assert journal.response("e0") == answer and journal.attempts == 2


def test_an_ending_event_ends_the_journal_once() -> None:
    journal = Journal(created(), 0, 0)
    ending = TaskCompleted(**TASK, result_json='{"content":[]}')
    assert journal.apply(ending) and journal.ended
    assert not journal.apply(ending)


def test_a_question_is_overdue_from_its_deadline_until_the_first_of_its_answer_and_its_timeout() -> None:
    journal = Journal(created(), 0, 0)
    question = asked(0, timeout_ms=60_000)
    journal.apply(question)
    assert journal.due() == question.occurred_at + 60_000
    assert journal.overdue(question.occurred_at + 59_999) is None
    assert journal.overdue(question.occurred_at + 60_000).elicitation_id == "e0"

    timed_out = ElicitationExpired(**TASK, elicitation_id="e0", timeout_ms=60_000)
    assert journal.apply(timed_out)
    assert not journal.waiting and journal.overdue(question.occurred_at + 60_000) is None
    assert journal.response("e0") == timed_out
    assert not journal.apply(answered(0)), "an answer after the timeout, in log order, is not taken"

    answered_first = Journal(created(), 0, 0)
    answered_first.apply(asked(0, timeout_ms=60_000))
    answered_first.apply(answered(0))
    assert not answered_first.apply(timed_out), "a timeout after the answer, in log order, is not taken"
    assert answered_first.response("e0").action == "accept"


def test_a_question_without_a_timeout_is_never_overdue() -> None:
    journal = Journal(created(), 0, 0)
    journal.apply(asked(0))
    assert journal.due() is None and journal.overdue(2**62) is None
