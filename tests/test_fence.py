"""The fence (projections/fence.py): once a worker claims a partition, only its events count among
those workers write there; the others stay on the log, shown as ignored."""

from __future__ import annotations

from hypothesis import given

from ledger.contract.codec import Codec
from ledger.contract.events import (
    ElicitationRequested,
    PartitionClaimed,
    ResponseSubmitted,
    StepRecorded,
    TaskCompleted,
    TaskCreated,
    TaskEvent,
    TaskStarted,
)
from projections.fence import Fence
from projections.history import render
from projections.projector import Projector, flush
from projections.store import ProjectionStore
from tests.support.factories import histories, sample, written

OLD, NEW = "worker:old", "worker:new"


def fold(events: list[TaskEvent], projector: Projector | None = None, first_offset: int = 0) -> Projector:
    projector = projector or Projector()
    for offset, event in enumerate(events, start=first_offset):
        projector.apply(written(0, offset, event))
    return projector


def asked_by(actor: str) -> list[TaskEvent]:
    return [sample(TaskCreated, "t", actor="server:s"), sample(TaskStarted, "t", actor=actor),
            sample(ElicitationRequested, "t", actor=actor, elicitation_id="e1")]


def test_a_worker_that_lost_its_partition_changes_nothing_after_the_new_claim() -> None:
    events = [sample(PartitionClaimed, "partition-0", actor=OLD), *asked_by(OLD),
              sample(PartitionClaimed, "partition-0", actor=NEW),
              sample(ResponseSubmitted, "t", actor="server:s", elicitation_id="e1"),
              sample(StepRecorded, "t", actor=OLD, name="ship"),
              sample(TaskCompleted, "t", actor=OLD, result_json='{"content": [{"type": "text", "text": "old"}]}'),
              sample(TaskStarted, "t", actor=NEW, attempt=2),
              sample(StepRecorded, "t", actor=NEW, name="ship"),
              sample(TaskCompleted, "t", actor=NEW, result_json='{"content": [{"type": "text", "text": "new"}]}')]
    projector = fold(events)
    row = projector.projection.get("t")
    assert row.status == "completed" and '"new"' in row.result_json
    entries = [render(stored, Codec()) for stored in projector.batch.entries]
    kinds = [entry.kind for entry in entries]
    assert kinds == ["created", "started", "asked", "answered", "ignored", "ignored", "started", "step", "completed"]
    ignored = [entry for entry in entries if entry.kind == "ignored"]
    assert all(OLD in entry.summary and NEW in entry.summary for entry in ignored)


def test_everything_counts_before_the_first_claim_and_servers_are_never_fenced() -> None:
    events = [*asked_by(OLD), sample(PartitionClaimed, "partition-0", actor=NEW),
              sample(ResponseSubmitted, "t", actor="server:s", elicitation_id="e1")]
    row = fold(events).projection.get("t")
    assert row.status == "working" and row.answers[0].elicitation_id == "e1"


def test_a_claim_on_another_partition_fences_nothing_here() -> None:
    fence = Fence()
    assert fence.admits(written(1, 0, sample(PartitionClaimed, "partition-1", actor=NEW, partition=1)))
    assert fence.admits(written(0, 0, sample(StepRecorded, "t", actor=OLD)))
    assert not fence.admits(written(1, 1, sample(StepRecorded, "u", actor=OLD)))


def test_a_store_keeps_the_owners_so_a_view_resuming_from_it_fences_the_same() -> None:
    first = [sample(PartitionClaimed, "partition-0", actor=OLD), *asked_by(OLD),
             sample(PartitionClaimed, "partition-0", actor=NEW)]
    later = [sample(ResponseSubmitted, "t", actor="server:s", elicitation_id="e1"),
             sample(TaskCompleted, "t", actor=OLD)]
    store = ProjectionStore()
    flush(store, fold(first).take(), {0: len(first)})
    assert store.owners() == {0: NEW}
    resumed = fold(later, Projector(store=store, capacity=100, owners=store.owners()), first_offset=len(first))
    whole = fold(first + later)
    assert resumed.projection.get("t") == whole.projection.get("t")
    assert whole.projection.get("t").status == "working"


@given(histories())
def test_a_fold_resumed_anywhere_with_the_stored_owners_equals_one_from_the_start(events: list[TaskEvent]) -> None:
    # A task is created once: a resumed fold takes a created event for a new task without asking its store.
    created: set[str] = set()
    events = [e for e in events if not isinstance(e, TaskCreated) or not (e.task_id in created or created.add(e.task_id))]
    whole = fold(events)
    for cut in (0, len(events) // 2, len(events)):
        store = ProjectionStore()
        flush(store, fold(events[:cut]).take(), {0: cut})
        resumed = fold(events[cut:], Projector(store=store, capacity=1000, owners=store.owners()), first_offset=cut)
        for task_id in {e.task_id for e in events}:
            assert resumed.projection.get(task_id) == whole.projection.get(task_id)
        store.close()
