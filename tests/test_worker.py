"""The worker on a real broker: runs, parks, resumes by replay, fails, cancels, hands over."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from examples.demo import app as demo
from ledger.contract.events import (
    TERMINAL_EVENTS,
    AttemptFailed,
    CancelRequested,
    ElicitationRequested,
    PartitionClaimed,
    ProgressReported,
    ResponseSubmitted,
    StepRecorded,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskExpired,
    TaskFailed,
    TaskStarted,
    TimerFired,
    TimerSet,
    iso,
)
from ledger.engine.app import InvalidArguments
from ledger.engine.worker import Worker
from ledger.kafka.appender import EventLog
from ledger.kafka.reader import LogReader
from ledger.kafka.records import LogRecord
from ledger.settings import Settings
from tests.support.apps.engine_app import app
from tests.support.engine import history, running_engine
from tests.support.factories import plan_trip
from tests.support.stack import running, until


def journal_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def result_text(row) -> str:
    return json.loads(row.result_json)["content"][0]["text"]


@pytest.mark.parametrize("hot_window_ms", [10_000, 0], ids=["resumed in place", "resumed by replay"])
async def test_steps_run_once_whether_resumed_in_place_or_replayed(
    settings: Settings, topics: dict, tmp_path: Path, hot_window_ms: int
) -> None:
    settings = replace(settings, hot_window_ms=hot_window_ms)
    effects = tmp_path / "effects"
    async with running_engine(app, settings) as engine:
        row = await engine.service.create("journaled", {"ledger_file": str(effects)}, principal=None,
                                          ttl_ms=None, protocol="test")
        row = await engine.settled(row.task_id)
        assert row.status == "input_required" and row.pending[0].message == "Ship it?"
        await engine.service.answer(row.task_id, None, row.pending[0].elicitation_id, "accept", {"ok": True},
                                    protocol="test")
        row = await engine.settled(row.task_id, "completed")
    assert result_text(row) == "1+2:True"
    assert effects.read_text().splitlines() == ["charge", "ship"]
    events = await history(settings, row.task_id)
    starts = [e.attempt for e in events if isinstance(e, TaskStarted)]
    assert starts == ([1] if hot_window_ms else [1, 2])
    assert [e.name for e in events if isinstance(e, StepRecorded)] == ["charge", "ship"]
    assert [e.progress for e in events if isinstance(e, ProgressReported)] == [1, 2]  # a re-run repeats none
    assert sum(isinstance(e, ElicitationRequested) for e in events) == 1
    assert sum(isinstance(e, TaskCompleted) for e in events) == 1


@pytest.mark.parametrize("hot_window_ms", [10_000, 0], ids=["woken in place", "woken by replay"])
async def test_a_sleep_parks_the_task_and_the_clock_a_re_run_sees_is_the_journals(
    settings: Settings, topics: dict, tmp_path: Path, hot_window_ms: int
) -> None:
    settings = replace(settings, hot_window_ms=hot_window_ms)
    effects = tmp_path / "effects"
    async with running_engine(app, settings) as engine:
        row = await engine.service.create("napping", {"seconds": 1.5, "ledger_file": str(effects)}, principal=None,
                                          ttl_ms=None, protocol="test")
        asleep = await engine.service.wait(row.task_id, None, lambda r: (r.status_message or "").startswith(
            "Sleeping until "), 30)
        assert asleep.status == "working" and not asleep.pending, asleep
        row = await engine.settled(row.task_id, "input_required")
        question = row.pending[0].message
        await engine.service.answer(row.task_id, None, row.pending[0].elicitation_id, "accept", {"ok": True},
                                    protocol="test")
        row = await engine.settled(row.task_id, "completed")
    events = await history(settings, row.task_id)
    timer = next(e for e in events if isinstance(e, TimerSet))
    fired = [e for e in events if isinstance(e, TimerFired)]
    answer = next(e for e in events if isinstance(e, ResponseSubmitted))
    assert len(fired) == 1 and fired[0].occurred_at >= timer.due
    assert result_text(row).split() == [journal_time(events[0].occurred_at), journal_time(fired[0].occurred_at),
                                        journal_time(answer.occurred_at)]
    assert question == f"Woke at {journal_time(fired[0].occurred_at)}; go on?", "a re-run sees the same clock"
    assert timer.duration_ms == 1_500 and asleep.status_message == f"Sleeping until {iso(timer.due)}"
    assert effects.read_text().splitlines() == ["note"], "the step before the sleep ran once"
    assert [e.attempt for e in events if isinstance(e, TaskStarted)] == ([1] if hot_window_ms else [1, 2, 3])


@pytest.mark.parametrize("fail_attempts, outcome", [
    (2, "completed"), (3, "failed"), (-1, "failed"),
], ids=["succeeds on attempt 3", "fails after its last attempt", "a non-retryable error fails at once"])
async def test_a_tool_that_raises_is_retried_by_its_policy_without_running_its_recorded_step_again(
    settings: Settings, topics: dict, tmp_path: Path, fail_attempts: int, outcome: str
) -> None:
    effects = tmp_path / "effects"
    async with running_engine(app, settings) as engine:
        row = await engine.service.create("flaky", {"ledger_file": str(effects), "fail_attempts": fail_attempts},
                                          principal=None, ttl_ms=None, protocol="test")
        row = await engine.settled(row.task_id, outcome)
    events = await history(settings, row.task_id)
    failed = [e for e in events if isinstance(e, AttemptFailed)]
    assert effects.read_text().splitlines() == ["charge"], "the recorded step ran once, whatever the attempts"
    if fail_attempts == 2:
        assert result_text(row) == "charged 1 on attempt 3"
        assert [(e.attempt, e.error_type, e.retry_delay_ms) for e in failed] == [
            (1, "ConnectionError", 200), (2, "ConnectionError", 400)]
        starts = {e.event_id: e for e in events if isinstance(e, TaskStarted)}
        assert len(starts) == 3 and all(
            min(s.occurred_at for s in starts.values() if s.attempt == e.attempt + 1) >= e.retry_at for e in failed)
    elif fail_attempts == 3:
        assert len(failed) == 2 and row.error == "attempt 3 of 3: the bank hung up on attempt 3"
    else:
        assert failed == [] and row.error == "the amount is not a number"
    assert sum(isinstance(e, TERMINAL_EVENTS) for e in events) == 1


async def test_a_replay_that_asks_something_else_fails_with_a_named_error(settings: Settings, topics: dict) -> None:
    settings = replace(settings, hot_window_ms=0)
    async with running_engine(app, settings) as engine:
        row = await engine.settled((await engine.service.create("fickle", {}, principal=None, ttl_ms=None,
                                                                 protocol="test")).task_id)
        assert row.pending[0].message == "Question number 1?"
        await engine.service.answer(row.task_id, None, row.pending[0].elicitation_id, "accept", {"ok": True},
                                    protocol="test")
        row = await engine.settled(row.task_id, "failed")
    assert "elicitation #0" in row.error and "Question number 2?" in row.error
    failed = [e for e in await history(settings, row.task_id) if isinstance(e, TaskFailed)]
    assert [e.error_type for e in failed] == ["NonDeterminismError"]


async def test_an_exception_fails_the_task_with_its_message(settings: Settings, topics: dict) -> None:
    async with running_engine(app, settings) as engine:
        row = await engine.service.create("broken", {"reason": "disk full"}, principal=None, ttl_ms=None,
                                          protocol="test")
        row = await engine.settled(row.task_id, "failed")
    assert row.error == "disk full" and row.status_message == "disk full"
    failed = [e for e in await history(settings, row.task_id) if isinstance(e, TaskFailed)]
    assert [(e.error_type, e.message) for e in failed] == [("RuntimeError", "disk full")]


@pytest.mark.parametrize("tool,arguments", [("sleepy", {"seconds": 30}), ("journaled", {"ledger_file": "/dev/null"})],
                         ids=["running", "waiting"])
async def test_cancel_stops_a_task_and_nothing_follows(settings: Settings, topics: dict, tool: str,
                                                       arguments: dict) -> None:
    async with running_engine(app, settings) as engine:
        row = await engine.service.create(tool, arguments, principal=None, ttl_ms=None, protocol="test")
        if tool == "sleepy":
            await engine.service.wait(row.task_id, None, lambda r: r.status_message == "started", 30)
        else:
            await engine.settled(row.task_id, "input_required")
        row = await engine.service.cancel(row.task_id, None, protocol="test")
        assert row.status == "cancelled"
        await asyncio.sleep(0.3)  # a negative check: a wrongly still-running tool would record more meanwhile
    events = await history(settings, row.task_id)
    assert isinstance(events[-1], TaskCancelled)
    assert not any(isinstance(e, (TaskCompleted, TaskFailed)) for e in events)


async def test_a_task_cancelled_in_the_batch_that_created_it_holds_no_slot(settings: Settings, topics: dict) -> None:
    # The worker folds the batch before it acts on it: the task ends without a run taking a slot.
    async with running_engine(app, settings) as engine, EventLog(settings) as log:
        member = engine.members[0]
        await until(lambda: not member.describe("")["catching_up"], 30)
        created = TaskCreated(task_id=str(uuid.uuid4()), principal=None, actor="server:test", tool="sleepy",
                              arguments_json='{"seconds":30}', protocol="test")
        await log.append_many([created, CancelRequested(task_id=created.task_id, principal=None,
                                                        actor="server:test", protocol="test")])
        await engine.settled(created.task_id, "cancelled")
        await until(lambda: member.describe(created.task_id)["slots"].startswith("0/"), 10)
        assert not member.describe(created.task_id)["run"]


@pytest.mark.parametrize("tool,arguments,requested_ttl,default_ttl", [
    ("journaled", {"ledger_file": "/dev/null"}, 1_500, None),
    ("sleepy", {"seconds": 30}, None, 1_000),
], ids=["waiting, its requested ttl", "running, LEDGER_TASK_TTL_MS"])
async def test_a_task_still_open_when_its_ttl_runs_out_is_failed_once_by_its_worker(
        settings: Settings, topics: dict, tool: str, arguments: dict, requested_ttl: int | None,
        default_ttl: int | None) -> None:
    settings = replace(settings, task_ttl_ms=default_ttl)
    async with running_engine(app, settings) as engine:
        row = await engine.service.create(tool, arguments, principal=None, ttl_ms=requested_ttl, protocol="test")
        assert row.ttl_ms == (requested_ttl or default_ttl)  # what tasks/get reports is what ledger does
        row = await engine.settled(row.task_id, "failed")
        await asyncio.sleep(0.3)  # a negative check: a wrongly still-running tool would record more meanwhile
    assert row.error.startswith("Expired: the task's ttl of")
    events = await history(settings, row.task_id)
    assert [type(e).__name__ for e in events if isinstance(e, TERMINAL_EVENTS)] == ["TaskExpired"]
    assert isinstance(events[-1], TaskExpired)


async def test_a_task_without_a_ttl_reports_none_and_stays_open(settings: Settings, topics: dict) -> None:
    async with running_engine(app, settings) as engine:
        row = await engine.service.create("journaled", {"ledger_file": "/dev/null"}, principal=None, ttl_ms=None,
                                          protocol="test")
        assert row.ttl_ms is None
        row = await engine.settled(row.task_id, "input_required")
        await asyncio.sleep(1.5)  # a negative check: longer than the shortest ttl ledger gives
        assert engine.service.view.get(row.task_id).status == "input_required"
        await engine.service.cancel(row.task_id, None, protocol="test")


async def test_progress_reports_are_coalesced_and_the_last_of_each_burst_is_written(settings: Settings,
                                                                                     topics: dict) -> None:
    async with running_engine(app, settings) as engine:
        row = await engine.service.create("chatty", {"reports": 500}, principal=None, ttl_ms=None, protocol="test")
        await engine.settled(row.task_id, "completed")
    reported = [e for e in await history(settings, row.task_id) if isinstance(e, ProgressReported)]
    progress = [e.progress for e in reported]
    assert len(reported) <= 6, progress  # 1,000 reports in about a second of run time
    assert 500 in progress and progress[-1] == 1000 and progress == sorted(progress)


async def test_a_tool_at_its_max_concurrency_leaves_slots_to_other_tasks(settings: Settings, topics: dict) -> None:
    settings = replace(settings, worker_concurrency=4)
    async with running_engine(app, settings) as engine:
        hogs = [await engine.service.create("hog", {"seconds": 20}, principal=None, ttl_ms=None, protocol="test")
                for _ in range(5)]
        quick = await engine.service.create("sleepy", {"seconds": 0.1}, principal=None, ttl_ms=None, protocol="test")
        assert (await engine.settled(quick.task_id, "completed")).status == "completed"
        started = [engine.service.view.get(row.task_id).status_message == "started" for row in hogs]
        assert sum(started) == 2, started  # hog's max_concurrency, although two slots stayed free
        for row in hogs:
            await engine.service.cancel(row.task_id, None, protocol="test")


async def test_bounds_in_a_tools_signature_are_in_its_schema_and_enforced(settings: Settings, topics: dict) -> None:
    schema = app.get("hog").input_schema["properties"]["seconds"]
    assert schema["exclusiveMinimum"] == 0 and schema["maximum"] == 60
    async with running_engine(app, settings) as engine:
        with pytest.raises(InvalidArguments, match="less than or equal to 60"):
            await engine.service.create("hog", {"seconds": 1e9}, principal=None, ttl_ms=None, protocol="test")


async def test_concurrency_is_bounded_and_waiting_tasks_do_not_hold_slots(settings: Settings, topics: dict) -> None:
    settings = replace(settings, worker_concurrency=2)
    async with running_engine(app, settings) as engine:
        waiting = [await engine.service.create("journaled", {"ledger_file": "/dev/null"}, principal=None,
                                               ttl_ms=None, protocol="test") for _ in range(5)]
        for row in waiting:
            assert (await engine.settled(row.task_id)).status == "input_required"
        sleepers = [await engine.service.create("sleepy", {"seconds": 0.5}, principal=None, ttl_ms=None,
                                                protocol="test") for _ in range(4)]
        for row in sleepers:
            await engine.settled(row.task_id, "completed")
    starts = []
    for row in sleepers:
        events = await history(settings, row.task_id)
        started = next(e for e in events if isinstance(e, TaskStarted))
        ended = next(e for e in events if isinstance(e, TaskCompleted))
        starts.append((started.occurred_at, ended.occurred_at))
    # With two slots, at no moment are more than two sleepers between started and completed.
    for at, _ in starts:
        assert sum(1 for s, e in starts if s <= at < e) <= 2


async def test_workers_joining_and_leaving_lose_and_repeat_nothing(settings: Settings, topics: dict) -> None:
    """A second worker joins while 200 tasks wait hot in the first, then leaves while they resume."""
    async with running_engine(app, settings) as engine:
        rows = [await engine.service.create("journaled", {"ledger_file": "/dev/null"}, principal=None,
                                            ttl_ms=None, protocol="test") for _ in range(200)]
        waiting = [await engine.settled(row.task_id, "input_required") for row in rows]
        joined = await engine.start_worker("w-joining")

        async def answer(row) -> None:
            await engine.service.answer(row.task_id, None, row.pending[0].elicitation_id, "accept",
                                        {"ok": True}, protocol="test")

        await asyncio.gather(*(answer(row) for row in waiting[:100]))
        joined.cancel()
        await asyncio.gather(joined, return_exceptions=True)
        await asyncio.gather(*(answer(row) for row in waiting[100:]))
        done = [await engine.settled(row.task_id, "completed") for row in rows]
    assert all(result_text(row).endswith(":True") for row in done)
    for row in rows:
        events = await history(settings, row.task_id)
        assert sum(isinstance(e, TaskCompleted) for e in events) == 1, row.task_id


async def test_a_restarted_worker_reads_its_partitions_to_the_end_before_it_runs_anything(
    settings: Settings, topics: dict
) -> None:
    """A run must see its task's whole history. A worker that started runs while still reading its
    partitions back would find a parked task without its later steps and its question, and would
    run those steps and ask that question a second time."""
    settings = replace(settings, hot_window_ms=0)
    async with running_engine(app, settings) as engine:
        row = await engine.service.create("bulky", {"parts": 40}, principal=None, ttl_ms=None, protocol="test")
        row = await engine.settled(row.task_id, "input_required")
        first_worker = engine.workers.pop()
        first_worker.cancel()
        await asyncio.gather(first_worker, return_exceptions=True)
        await engine.start_worker("w-restarted")
        restarted = engine.members[-1]
        # The answer comes once the restarted worker has read its partitions (the 4 MB history) back to
        # its claims.
        await until(lambda: restarted.owned_partitions() and not restarted.describe(row.task_id)["catching_up"], 60)
        await engine.service.answer(row.task_id, None, row.pending[0].elicitation_id, "accept", {"ok": True},
                                    protocol="test")
        row = await engine.settled(row.task_id, "completed")
    assert result_text(row) == "shipped 40"
    events = await history(settings, row.task_id)
    steps = Counter(e.name for e in events if isinstance(e, StepRecorded))
    assert len(steps) == 40 and set(steps.values()) == {1}
    assert sum(isinstance(e, ElicitationRequested) for e in events) == 1


async def test_a_worker_claims_its_partitions_and_commits_on_its_claims(settings: Settings, topics: dict) -> None:
    """Whoever reads a partition on from its committed offset first reads whose writes count there."""
    async with running_engine(app, settings) as engine:
        rows = [await engine.service.create("broken", {"reason": "quick"}, principal=None, ttl_ms=None,
                                            protocol="test") for _ in range(8)]
        for row in rows:
            await engine.settled(row.task_id, "failed")
        # A member of the group that subscribes to nothing only reads the group's committed offsets.
        reader = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=f"{settings.topic_prefix}.workers",
                                  enable_auto_commit=False)
        await reader.start()
        try:
            async def committed() -> dict[int, int] | None:
                found = {p: await reader.committed(TopicPartition(settings.events_topic, p))
                         for p in range(settings.partitions)}
                return found if None not in found.values() else None

            offsets = await until(committed, 30)
        finally:
            await reader.stop()
    records = {(r.partition, r.offset): r.event async for r in _records(settings)}
    claims = {(p, o) for (p, o), event in records.items() if isinstance(event, PartitionClaimed)}
    assert {event.partition for (_, _), event in records.items() if isinstance(event, PartitionClaimed)} == \
        set(range(settings.partitions))
    assert all((partition, offset) in claims for partition, offset in offsets.items())


async def _records(settings: Settings):
    async with LogReader(settings) as reader:
        async for batch in reader.catch_up():
            for record in batch:
                yield record


async def test_a_worker_catching_up_holds_only_the_tasks_still_open(settings: Settings, topics: dict) -> None:
    async with EventLog(settings) as log:  # one task waiting for its answer, then 300 that finished
        await log.append_many(plan_trip("waiting")[:3] + [e for i in range(300) for e in plan_trip(f"done-{i}")])
    worker = Worker(demo, settings, worker_id="fresh")
    held: list[int] = []
    handle = worker._handle

    async def counted(records: list[LogRecord]) -> None:
        await handle(records)
        if worker._catching_up:
            held.append(sum(map(len, worker._journals.values())))

    worker._handle = counted
    async with running(worker):
        await until(lambda: not worker._catching_up, 30, lambda: "the worker never read to its claims")
        partition = next(p for p, journals in worker._journals.items() if "waiting" in journals)
        assert worker._journals[partition]["waiting"].waiting
    # A finished task leaves as its end is read, not when the whole catch-up is over.
    assert held and max(held) <= 10, held
