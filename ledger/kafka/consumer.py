"""What the reader and the group consumer share: fetching and decoding, dead letters, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, LeaderNotAvailableError, for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import ConsumerRecord

from ledger import hops
from ledger.contract.codec import Codec
from ledger.kafka.profiles import BrokerProfile, broker_profile
from ledger.kafka.records import DeadLetterSink, LogRecord, decode_records
from ledger.kafka.security import AUTHORIZATION_ERRORS, connection, not_allowed
from ledger.settings import Settings

log = logging.getLogger(__name__)

GAP_PATIENCE_S = 10.0
STARVED_WAIT_MS = 20
QUIET_WAIT_GROWTH_MS_PER_S = 25  # per second with no event, up to LEDGER_IDLE_FETCH_WAIT_MS
METADATA_MAX_AGE_MS = 2_000  # how soon a consumer learns that a partition's leader moved (aiokafka: 5 min)


class DecodingConsumer:
    """An aiokafka consumer on the task-events topic that yields decoded events.

    Records that do not decode go to the dead-letter sink and are counted; they never stop
    the loop. What the broker needs (``ledger.kafka.profiles``) decides two things:

    * On a broker that can serve a batch before an earlier one of the same partition is readable
      (the embedded broker, under load), records are handed out without holes: a consumer that took
      the later batch would never see the earlier one. A hole means "not yet": the records before it
      are handed out and the partition is read again from the hole (offsets in ledger's topics are
      contiguous: no compaction, no transactions). A hole that stays for ``GAP_PATIENCE_S`` is
      reported and read past.
    * A broker that answers a fetch as soon as an event arrives (Kafka) is long-polled for
      ``LEDGER_IDLE_FETCH_WAIT_MS``. One that holds every empty fetch for its whole wait (the
      embedded broker) is paced: the wait is each hop's latency, short while events flow and growing
      the longer the topic is quiet, so that an idle consumer costs little CPU and a short pause
      costs little latency.
    """

    def __init__(
        self,
        settings: Settings,
        options: dict[str, Any],
        codec: Codec | None,
        dead_letters: DeadLetterSink,
        max_records: int,
    ) -> None:
        self.settings = settings
        self.topic = settings.events_topic
        self.codec = codec or Codec()
        self.dead_letter_count = 0
        self.profile: BrokerProfile | None = None
        self._options = options
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters = dead_letters
        self._max_records = max_records
        self._positions: dict[int, int] = {}  # next offset to hand out, once known
        self._holes: dict[int, tuple[int, float]] = {}  # partition -> (offset, first seen)
        self.holes_waited = 0
        self._starved_fetches = 0  # fetches in a row that came back empty below the high watermark
        self._last_event = time.monotonic()

    async def start(self) -> None:
        self.profile = await broker_profile(self.settings)
        wait = self.settings.fetch_max_wait_ms
        if self.profile.answers_fetch_early:
            wait = self.settings.idle_fetch_wait_ms
        # A frozen leader accepts connections and answers nothing: a fetch from it hangs for the request
        # timeout, and aiokafka learns that its partitions moved only from fresh metadata. So metadata is
        # asked for every few seconds, and a request left unanswered is given up after a produce
        # timeout on top of the longest fetch wait (a group member's after the rebalance timeout: the
        # coordinator holds a JoinGroup that long).
        options = {"request_timeout_ms": self.settings.produce_timeout_ms + self.settings.idle_fetch_wait_ms,
                   "metadata_max_age_ms": METADATA_MAX_AGE_MS, **self._options}
        self._consumer = AIOKafkaConsumer(**connection(self.settings), fetch_max_wait_ms=wait,
                                          enable_auto_commit=False, auto_offset_reset="earliest", **options)
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            except asyncio.CancelledError:
                # aiokafka's fetcher awaits the fetch task it just cancelled, and so raises that task's
                # CancelledError when the fetch was waiting to retry (a broker gone): stopped all the same.
                if asyncio.current_task().cancelling():
                    raise

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def fetch(self, timeout_ms: int | None = None) -> list[LogRecord]:
        """One fetch across the assigned partitions; may be empty. ``timeout_ms`` bounds how long this
        call waits; the broker's fetch wait is paced all the same."""
        wait = self._pace()
        try:
            fetched = await self._consumer.getmany(timeout_ms=wait if timeout_ms is None else timeout_ms,
                                                   max_records=self._max_records)
        except AUTHORIZATION_ERRORS as exc:
            refused = f"use the consumer group {self._options.get('group_id')}" if \
                isinstance(exc, GroupAuthorizationFailedError) else f"read {self.topic}"
            raise not_allowed(self.settings, refused) from None
        if fetched:
            self._last_event = time.monotonic()
            if hops.TRACE_FILE:
                hops.hop("fetched", ",".join(sorted({m.key.decode() for ms in fetched.values() for m in ms if m.key})))
        records: list[LogRecord] = []
        for tp, messages in fetched.items():
            if not self.reads(tp.partition):
                self._read_again(tp, messages[0].offset)
                continue
            if not self.profile.serves_batches_in_order:
                messages = self._without_holes(tp, messages)
                if not messages:
                    continue
            decoded, dead = decode_records(self.codec, self.topic, tp.partition, messages)
            records.extend(decoded)
            for letter in dead:
                self.dead_letter_count += 1
                await self._dead_letters(letter)
            self._positions[tp.partition] = messages[-1].offset + 1
        if not self.profile.answers_fetch_early:
            got = sum(map(len, fetched.values()))
            self._starved_fetches = self._starved_fetches + 1 if sum(self.lag_by_partition().values()) > got else 0
        return records

    def reads(self, partition: int) -> bool:
        """Whether records of ``partition`` are handed out now (all of them, unless a subclass says)."""
        return True

    def _read_again(self, tp: TopicPartition, offset: int) -> None:
        """Leave the fetched records of ``tp`` from ``offset`` on for a later fetch."""
        if tp in self._consumer.assignment():
            self._consumer.seek(tp, offset)

    def lag_by_partition(self) -> dict[int, int]:
        """Events past what was read in each assigned partition, as the last fetches showed."""
        lags: dict[int, int] = {}
        if self._consumer is None:  # not started yet
            return lags
        for tp in self._consumer.assignment():
            highwater, position = self._consumer.highwater(tp), self._positions.get(tp.partition)
            if highwater is not None and position is not None:
                lags[tp.partition] = max(0, highwater - position)
        return lags

    def _starved_wait(self) -> int:
        # The embedded broker returns nothing, or one batch, from a partition of many batches when
        # the wait is shorter than it takes to scan them (none at 2 ms from 20,000 one-event
        # batches, so catch-up never ended; one at a time, so `ledger tasks` read 24,000 in 74 s):
        # from the second fetch in a row that leaves more unread than it brought (the first is often
        # events appended while the fetch was answered), each doubles the wait, from 20 ms. A fetch
        # holds its wait only while it finds nothing, so a long one costs a reader catching up
        # little, and the first fetch that leaves less behind than it brought ends it.
        if self._starved_fetches < 2:
            return 0
        return min(STARVED_WAIT_MS << min(self._starved_fetches - 2, 16), self.settings.idle_fetch_wait_ms)

    def _pace(self) -> int:
        """The fetch wait for the fetches from now on."""
        if self.profile.answers_fetch_early:
            return self.settings.idle_fetch_wait_ms
        wait = max(fetch_wait_ms(time.monotonic() - self._last_event, self.settings.fetch_max_wait_ms,
                                 self.settings.idle_fetch_wait_ms), self._starved_wait())
        set_fetch_wait(self._consumer, wait)
        return wait

    def _without_holes(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> list[ConsumerRecord]:
        expected = self._positions.get(tp.partition)
        if expected is None or not messages:
            return messages
        run = contiguous_run(expected, [m.offset for m in messages])
        if run == len(messages):
            self._holes.pop(tp.partition, None)
            return messages
        hole = expected + run
        first_seen = self._holes.get(tp.partition)
        if first_seen is None or first_seen[0] != hole:
            first_seen = self._holes[tp.partition] = (hole, time.monotonic())
        if time.monotonic() - first_seen[1] > GAP_PATIENCE_S:
            log.error("partition %d: offsets from %d to %d never became readable; reading on from %d",
                      tp.partition, hole, messages[run].offset - 1, messages[run].offset)
            del self._holes[tp.partition]
            return messages
        self.holes_waited += 1
        self._consumer.seek(tp, hole)
        return messages[:run]


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions as the cluster reports them now (empty when there is no such topic).

    A consumer's own metadata only covers the topics it already reads; ask for the cluster's.
    """
    cluster = await consumer._client.fetch_all_metadata()
    return cluster.partitions_for_topic(topic) or set()


async def end_offsets(consumer: AIOKafkaConsumer, profile: BrokerProfile, topic: str,
                      starts: Mapping[int, int]) -> dict[int, int]:
    """The end of each partition of ``topic`` in ``starts`` as it is now. Where ListOffsets is exact
    (Kafka), as the broker lists it; elsewhere (the embedded broker's under-reports) from the high
    watermarks of a fetch sent now from the offsets in ``starts``, which waits 1 ms at most and takes
    next to nothing (asked not to wait at all, the embedded broker answers with no partitions)."""
    partitions = [TopicPartition(topic, partition) for partition in starts]
    if profile.exact_end_offsets:
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(partitions)).items()}
    client = consumer._client
    by_leader: dict[int, list[tuple[int, int, int]]] = {}
    for tp in partitions:
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            raise LeaderNotAvailableError(f"no leader known for {topic} partition {tp.partition}")
        by_leader.setdefault(leader, []).append((tp.partition, starts[tp.partition], 1))
    responses = await asyncio.gather(*(client.send(leader, FetchRequest(1, 0, 1, 0, [(topic, fetched)]))
                                       for leader, fetched in by_leader.items()))
    ends: dict[int, int] = {}
    for response in responses:
        for _, answered in response.topics:
            for partition, error_code, highwater, *_ in answered:
                if error_code:
                    raise for_code(error_code)(f"{topic} partition {partition}: its end could not be fetched")
                ends[partition] = highwater
    return ends


def set_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """How long the broker may hold ``consumer``'s fetches from now on."""
    # aiokafka takes the wait from this attribute for every fetch request it builds; it has no setter.
    consumer._fetcher._fetch_max_wait_ms = wait_ms


def fetch_wait_ms(quiet_s: float, flowing_ms: int, idle_ms: int) -> int:
    """The fetch wait after ``quiet_s`` seconds without an event."""
    return min(max(flowing_ms, int(quiet_s * QUIET_WAIT_GROWTH_MS_PER_S)), idle_ms)


def contiguous_run(expected: int, offsets: Sequence[int]) -> int:
    """How many of ``offsets`` follow on from ``expected`` without a hole."""
    for index, offset in enumerate(offsets):
        if offset != expected + index:
            return index
    return len(offsets)
