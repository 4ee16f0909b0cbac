"""Contract tests of the Kafka log against a real broker (embedded Tansu, or LEDGER_BOOTSTRAP)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ledger.contract.codec import Codec
from ledger.contract.events import (
    EVENT_TYPES,
    ProgressReported,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskStarted,
    derived_id,
)
from ledger.kafka.appender import AppendTimeout, EventLog
from ledger.kafka.broker import EmbeddedBroker, free_port, freeze
from ledger.kafka.consumer import contiguous_run, fetch_wait_ms
from ledger.kafka.group import GroupConsumer
from ledger.kafka.reader import LogReader
from ledger.kafka.records import DeadLetter, LogRecord
from ledger.kafka.topics import TopicError, ensure_topics
from ledger.settings import Settings
from projections.projector import Projector, flush
from projections.store import ProjectionStore
from tests.support.factories import sample
from tests.support.stack import until

ROOT = Path(__file__).resolve().parent.parent


async def read_all(settings: Settings, **kwargs) -> list[LogRecord]:
    async with LogReader(settings, **kwargs) as reader:
        return [record async for batch in reader.catch_up() for record in batch]


async def test_append_then_read_every_event_type(settings: Settings, event_log: EventLog) -> None:
    written = [sample(cls, f"task-{i}") for i, cls in enumerate(EVENT_TYPES.values())]
    positions = await event_log.append_many(written)
    records = await read_all(settings)
    assert sorted(r.event.event_id for r in records) == sorted(e.event_id for e in written)
    by_id = {r.event.event_id: r for r in records}
    for event, position in zip(written, positions):
        record = by_id[event.event_id]
        assert record.event == event
        assert (record.partition, record.offset) == position


async def test_per_task_order_is_kept_within_one_partition(settings: Settings, event_log: EventLog) -> None:
    tasks = [f"task-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    steps = 30

    async def write(task_id: str) -> None:
        for step in range(steps):
            await event_log.append(sample(ProgressReported, task_id, progress=float(step)))

    await asyncio.gather(*(write(t) for t in tasks))
    per_task: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in await read_all(settings):
        per_task[record.event.task_id].append((record.partition, record.event.progress))
    assert set(per_task) == set(tasks)
    for task_id, seen in per_task.items():
        assert len({partition for partition, _ in seen}) == 1, task_id
        assert [progress for _, progress in seen] == [float(s) for s in range(steps)], task_id


@pytest.mark.parametrize("expected,offsets,run", [
    (5, [], 0), (5, [5, 6, 7], 3), (5, [6, 7], 0), (5, [5, 6, 9, 10], 2), (0, [0], 1),
])
def test_contiguous_run_stops_at_the_first_hole(expected: int, offsets: list[int], run: int) -> None:
    assert contiguous_run(expected, offsets) == run


async def test_a_follower_sees_every_event_of_concurrent_writers_once_and_in_order(settings: Settings,
                                                                                    topics: dict) -> None:
    # Under load the embedded broker can serve a batch before an earlier one of the same
    # partition is readable; the reader must wait for the earlier one instead of skipping it.
    writers = [EventLog(settings, client_id=f"writer-{i}") for i in range(3)]
    per_writer = 10_000
    seen: dict[int, list[int]] = defaultdict(list)
    async with LogReader(settings) as reader:
        for writer in writers:
            await writer.start()
        try:
            async def write(writer: EventLog, n: int) -> None:
                pending = [asyncio.ensure_future(writer.append(sample(ProgressReported, f"t{n}-{i % 7}",
                                                                     progress=float(i))))
                           for i in range(per_writer)]
                await asyncio.gather(*pending)

            writing = asyncio.gather(*(write(w, n) for n, w in enumerate(writers)))
            while not writing.done() or sum(map(len, seen.values())) < per_writer * len(writers):
                for record in await reader.fetch():
                    seen[record.partition].append(record.offset)
                if writing.done():
                    writing.result()
        finally:
            for writer in writers:
                await writer.stop()
    for partition, offsets in seen.items():
        assert offsets == list(range(len(offsets))), f"partition {partition} skipped or repeated offsets"
    assert sum(map(len, seen.values())) == per_writer * len(writers)


@pytest.mark.parametrize(("quiet_s", "wait"), [(0, 2), (0.05, 2), (0.2, 5), (1, 25), (10, 250), (3600, 250)])
def test_fetches_wait_longer_the_longer_the_topic_is_quiet(quiet_s: float, wait: int) -> None:
    assert fetch_wait_ms(quiet_s, flowing_ms=2, idle_ms=250) == wait


async def test_a_follower_fetches_with_the_short_wait_while_events_flow(settings: Settings,
                                                                         event_log: EventLog) -> None:
    async with LogReader(settings) as reader:
        if reader.profile.answers_fetch_early:
            pytest.skip("the broker answers a fetch when an event arrives: nothing to pace")
        fetcher = reader._consumer._fetcher  # the attribute DecodingConsumer paces; aiokafka sets it from config
        assert fetcher._fetch_max_wait_ms == settings.fetch_max_wait_ms
        reader._last_event -= 3600
        assert await reader.fetch() == []
        assert fetcher._fetch_max_wait_ms == settings.idle_fetch_wait_ms
        await event_log.append(sample(TaskCreated, "paced"))
        await until(reader.fetch, 10)
        await reader.fetch()
        assert fetcher._fetch_max_wait_ms == settings.fetch_max_wait_ms


async def test_a_long_poll_returns_when_an_event_arrives(settings: Settings, event_log: EventLog) -> None:
    # Fetches wait up to 60 s for an event; one appended meanwhile must come back long before that.
    patient = replace(settings, idle_fetch_wait_ms=60_000)
    async with LogReader(patient) as reader:
        if not reader.profile.answers_fetch_early:
            pytest.skip("the embedded broker holds an empty fetch for its whole wait: fetches are paced instead")
        assert await reader.fetch(timeout_ms=0) == []
        fetching = asyncio.create_task(reader.fetch())
        consumer = reader._consumer  # aiokafka's: its fetcher keeps a fetch out at each partition's leader

        def held_by_every_leader() -> bool:
            leaders = {consumer._client.cluster.leader_for_partition(tp) for tp in consumer.assignment()}
            return not fetching.done() and leaders <= consumer._fetcher._in_flight

        await until(held_by_every_leader, 10)  # the event is appended while the brokers hold the fetches
        await event_log.append(sample(TaskCreated, "early"))
        records = await asyncio.wait_for(fetching, 20)
        assert [r.event.task_id for r in records] == ["early"]


async def test_catch_up_reads_everything_across_many_batches(settings: Settings, event_log: EventLog) -> None:
    # Many produce batches per partition: the case where the embedded broker's ListOffsets
    # under-reports the end (docs/operations.md); catch-up must still read every event.
    total = 0
    for round_ in range(10):
        await event_log.append_many([sample(ProgressReported, f"t{i}", progress=float(round_)) for i in range(150)])
        total += 150
    records = await read_all(settings, max_records=100)
    assert len(records) == total


async def test_resume_from_a_checkpoint(settings: Settings, event_log: EventLog) -> None:
    first = [sample(TaskCreated, f"task-{i}") for i in range(40)]
    await event_log.append_many(first)
    async with LogReader(settings) as reader:
        assert len([r async for batch in reader.catch_up() for r in batch]) == 40
        checkpoint = reader.positions()
    second = [sample(TaskCreated, f"task-{i}") for i in range(40, 70)]
    await event_log.append_many(second)
    resumed = await read_all(settings, checkpoint=checkpoint)
    assert sorted(r.event.event_id for r in resumed) == sorted(e.event_id for e in second)


async def test_corrupt_and_unknown_records_become_dead_letters(settings: Settings, event_log: EventLog) -> None:
    codec = Codec()
    before = sample(TaskCreated, "task-a")
    after = sample(TaskCreated, "task-a")
    unknown = bytearray(codec.encode(sample(TaskCreated, "task-a")))
    unknown[2:10] = bytes.fromhex("deadbeefdeadbeef")
    await event_log.append(before)
    raw = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    await raw.start()
    try:
        corrupt_at = await raw.send_and_wait(settings.events_topic, value=b"not avro at all", key=b"task-a")
        unknown_at = await raw.send_and_wait(settings.events_topic, value=bytes(unknown), key=b"task-a")
    finally:
        await raw.stop()
    await event_log.append(after)

    reported: list[DeadLetter] = []

    async def sink(letter: DeadLetter) -> None:
        reported.append(letter)
        await event_log.record_dead_letter(letter)

    async with LogReader(settings, dead_letters=sink) as reader:
        records = [r async for batch in reader.catch_up() for r in batch]
        assert reader.dead_letter_count == 2
    assert [r.event.event_id for r in records] == [before.event_id, after.event_id]
    assert [(d.partition, d.offset) for d in reported] == [
        (corrupt_at.partition, corrupt_at.offset),
        (unknown_at.partition, unknown_at.offset),
    ]
    assert reported[1].fingerprint == "deadbeefdeadbeef"
    assert "deadbeefdeadbeef" in reported[1].reason

    dead = AIOKafkaConsumer(settings.dead_letter_topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest")
    await dead.start()
    try:
        batch = await dead.getmany(timeout_ms=5_000)
        messages = [m for ms in batch.values() for m in ms]
        while len(messages) < 2:
            batch = await dead.getmany(timeout_ms=5_000)
            assert batch, "dead letters did not arrive"
            messages += [m for ms in batch.values() for m in ms]
    finally:
        await dead.stop()
    assert [m.value for m in messages][0] == b"not avro at all"
    headers = dict(messages[1].headers)
    assert headers["source-offset"] == str(unknown_at.offset).encode()
    assert b"deadbeefdeadbeef" in headers["reason"]


async def test_group_member_killed_hands_over_from_committed_offsets(settings: Settings, event_log: EventLog) -> None:
    written = [sample(TaskCreated, f"task-{i}") for i in range(200)]
    positions = await event_log.append_many(written)
    group = f"workers-{uuid.uuid4().hex[:8]}"
    member = subprocess.Popen(
        [sys.executable, "-m", "tests.support.processes.group_member", settings.bootstrap, settings.topic_prefix,
         str(settings.partitions), group, "120"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(member.stdout.readline), 60)
        committed = {int(p): o for p, o in json.loads(line)["committed"].items()}
    finally:
        member.send_signal(signal.SIGKILL)
        member.wait()
    assert sum(committed.values()) == 120

    known_at_assignment: dict[int, int | None] = {}

    async def assigned(partitions: set[int]) -> None:
        known_at_assignment.update({p: successor.position(p) for p in partitions})

    successor = GroupConsumer(settings, group, on_assigned=assigned)
    await successor.start()
    try:
        resumed: list[LogRecord] = []
        async with asyncio.timeout(60):
            while len(resumed) < 80:
                resumed += await successor.fetch(timeout_ms=500)
        expected = {p for p in positions if p.offset >= committed.get(p.partition, 0)}
        assert {(r.partition, r.offset) for r in resumed} == expected
        assert len(resumed) == len(expected) == 80
        assert successor.assignment() == set(range(settings.partitions))
        if not successor.profile.serves_batches_in_order:
            # Where a later batch can be served first, the first fetch is checked for holes too: it
            # knows where it starts (a hole there once lost a task's created event for good).
            assert known_at_assignment == {p: committed.get(p, 0) for p in range(settings.partitions)}
    finally:
        await successor.stop()


async def test_reading_a_topic_that_does_not_exist_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(TopicError, match="does not exist"):
        async with LogReader(settings):
            pass


async def test_a_reader_finishes_a_partition_of_thousands_of_one_event_batches(settings: Settings,
                                                                                  broker_kind: str) -> None:
    # Each event a person or a tool produces is usually a batch of its own; a partition of thousands
    # of them must not stall a reader whose fetches wait only 2 ms (the embedded broker returned
    # nothing from a partition of 20,000 at that wait, and catch-up never ended).
    settings = replace(settings, topic_prefix=f"test-{uuid.uuid4().hex[:12]}", partitions=1, fetch_max_wait_ms=2)
    # On Kafka each acknowledged append is a replication round trip (20,000 took 80 s): 5,000 say the
    # same there, where a fetch is answered as soon as records are readable anyway.
    written = 20_000 if broker_kind == "embedded" else 5_000
    await ensure_topics(settings)
    async with EventLog(settings) as log:
        for i in range(written):
            await log.append(sample(ProgressReported, f"chatty-{i}"))  # one at a time: a batch each
    read = await asyncio.wait_for(read_all(settings), 60)
    assert len(read) == written


async def test_the_same_terminal_event_from_two_producers_is_one_transition(settings: Settings,
                                                                            topics: dict[str, int]) -> None:
    # An append that landed after its deadline and its retry, by a new producer or a re-run of the tool,
    # carry one derived id: the task ends once, and its history shows one end.
    task_id, actor = f"task-{uuid.uuid4()}", "worker:w1"
    ending = derived_id(task_id, actor, "ended", 0)
    completed = sample(TaskCompleted, task_id, actor=actor, event_id=ending)
    failed_on_rerun = sample(TaskFailed, task_id, actor=actor, event_id=ending)
    async with EventLog(settings, client_id="first") as first, EventLog(settings, client_id="second") as second:
        await first.append_many([sample(TaskCreated, task_id), sample(TaskStarted, task_id, actor=actor)])
        await asyncio.gather(first.append(completed), second.append(completed))
        await second.append(failed_on_rerun)
    records = await read_all(settings)
    assert sum(r.event.event_id == ending for r in records) == 3
    projector = Projector()
    for record in records:
        projector.apply(record)
    store = ProjectionStore()
    flush(store, projector.take(), {})
    assert store.row(task_id).status == "completed"
    assert [entry.kind for entry in store.history(task_id)] == ["created", "started", "completed"]


def test_a_workers_events_take_ids_from_what_they_record() -> None:
    assert derived_id("t", "worker:a", "step", 0) == derived_id("t", "worker:a", "step", 0)
    others = {derived_id("t", "worker:a", "step", 1), derived_id("t", "worker:b", "step", 0),
              derived_id("u", "worker:a", "step", 0), derived_id("t", "worker:a", "asked", 0)}
    assert derived_id("t", "worker:a", "step", 0) not in others and len(others) == 4


async def test_an_append_to_a_frozen_broker_settles_at_its_deadline(broker_kind: str) -> None:
    # A SIGSTOPped broker keeps its sockets open and answers nothing: aiokafka's idempotent producer
    # would wait for it forever. The append ends at its deadline instead, and what it sent is on the
    # log once the broker is back.
    if broker_kind != "embedded":
        pytest.skip("freezes a broker of its own: the embedded one")
    with EmbeddedBroker(port=free_port()) as broker:
        settings = Settings.from_env(bootstrap=broker.bootstrap, topic_prefix="frozen", partitions=1,
                                     produce_timeout_ms=500, append_timeout_ms=3_000)
        await ensure_topics(settings)
        async with EventLog(settings) as log:
            before = sample(TaskCreated, "before")
            await log.append(before)
            freeze(broker.pid)
            try:
                during = sample(TaskCreated, "during")
                with pytest.raises(AppendTimeout, match="within 3 s"):
                    await asyncio.wait_for(log.append(during), 30)
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            after = sample(TaskCreated, "after")
            await log.append(after)
        assert (log.confirmed, log.unconfirmed) == (2, 1)
        on_log = [r.event.event_id for r in await read_all(settings)]
        assert on_log.count(before.event_id) == on_log.count(after.event_id) == 1
        assert on_log.count(during.event_id) <= 1 + log.resent

