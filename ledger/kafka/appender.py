"""Appending events to the task-events topic: acks=all, keyed by task id, batched."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.partitioner import murmur2
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger import hops
from ledger.contract.codec import Codec
from ledger.contract.events import TaskEvent
from ledger.kafka.profiles import broker_profile
from ledger.kafka.records import DeadLetter, Position
from ledger.kafka.security import AUTHORIZATION_ERRORS, connection, not_allowed
from ledger.metrics import Metrics
from ledger.pauses import settles_on_waking
from ledger.settings import Settings

log = logging.getLogger(__name__)


# Errors after which a producer sends nothing more (its sequence numbers or its epoch are spent, or its
# sender stopped): aiokafka does not recover from them (aiokafka#1017), a new producer does.
WEDGED = (OutOfOrderSequenceNumber, UnknownProducerId, ProducerFenced, InvalidProducerEpoch, ProducerClosed)
RETRY_BACKOFF_S = 0.2


class AppendTimeout(TimeoutError):
    """The log did not confirm an append in time. The producer keeps trying, so the event may still
    be recorded once the brokers take writes again: neither outcome may be assumed."""

    def __init__(self, event: TaskEvent, seconds: float) -> None:
        self.task_id = event.task_id
        super().__init__(f"the log did not confirm {type(event).__name__} of task {event.task_id} within "
                         f"{seconds:g} s; it may still be recorded once the brokers take writes again")


class EventLog:
    """The write side of the log. ``append`` returns once the event is durable (acks=all).

    Concurrent appends are batched by the producer (``LEDGER_LINGER_MS``), so callers append one event
    at a time and still get batched produces.

    Every append settles: confirmed, refused by the log, or ``AppendTimeout`` after ``deadline``
    seconds (default: ``LEDGER_APPEND_TIMEOUT_MS``, derived from the produce timeout). A producer that
    goes a stall period (three produce timeouts, at most the deadline) with an append waiting and no
    acknowledgement at all, or that hits an error it cannot recover from, is replaced, and what it
    had not confirmed is sent again on the new one. A copy may then land twice; both copies carry the
    same ``event_id`` and every fold keeps one. An append goes on when its caller is cancelled (a run
    stopped, a client gone), so that ``stop`` can wait for it and count it.
    """

    def __init__(self, settings: Settings, codec: Codec | None = None, client_id: str | None = None,
                 metrics: Metrics | None = None, deadline: float | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.codec = codec or Codec()
        self.topic = settings.events_topic
        self.deadline = deadline if deadline is not None else settings.append_deadline_ms / 1000
        self.stall_after = min(3 * settings.produce_timeout_ms / 1000, self.deadline)
        self.confirmed = 0  # events the log acknowledged
        self.unconfirmed = 0  # events whose append timed out, failed or was given up (the log may have them)
        self.resent = 0  # events sent again on a new producer (the log may hold them twice, one event_id)
        self.replacements = 0
        self._client_id = client_id or f"{settings.client_id}-producer"
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0  # which producer: bumped by each replacement
        self._acknowledged_at = 0.0  # when the current producer last had a delivery confirmed
        self._replacing = asyncio.Lock()
        self._appends: dict[asyncio.Future, _Waiting] = {}  # appends in flight
        self._last_failure: str | None = None

    async def start(self) -> None:
        self._producer = await self._started_producer()

    async def _started_producer(self) -> AIOKafkaProducer:
        profile = await broker_profile(self.settings)
        producer = AIOKafkaProducer(
            **connection(self.settings),
            client_id=self._client_id,
            acks="all",
            # Where the broker has it, retries are de-duplicated by the broker; events are also
            # de-duplicated by event_id downstream, which is all the embedded broker allows.
            enable_idempotence=profile.idempotent_producer,
            linger_ms=self.settings.linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=self.settings.produce_timeout_ms,
        )
        try:
            await producer.start()
        except AUTHORIZATION_ERRORS:
            await producer.stop()
            raise not_allowed(self.settings, f"write to {self.settings.events_topic}") from None
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def stop(self) -> None:
        """Wait for the appends in flight (each settles within its deadline), then close the producer."""
        if self._producer is None:
            return
        if self._appends:
            await asyncio.wait(list(self._appends))
        await _closed(self._producer, self.settings.produce_timeout_ms / 1000)
        resent = f", {self.resent} sent again by a new producer" if self.resent else ""
        failure = f" (the last: {self._last_failure})" if self.unconfirmed and self._last_failure else ""
        log.info("%s: %d events appended and confirmed by the log, %d not confirmed%s%s", self._client_id,
                 self.confirmed, self.unconfirmed, failure, resent)

    async def __aenter__(self) -> EventLog:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def append(self, event: TaskEvent, partition: int | None = None) -> Position:
        """Append ``event`` to its task's partition (or to ``partition``); returns where it landed."""
        return (await self._settled([event], [partition]))[0]

    async def append_many(self, events: Sequence[TaskEvent]) -> list[Position]:
        """Append in order (per task) and wait for all; one batch where the producer can."""
        return await self._settled(events, [None] * len(events))

    def brokers(self) -> list[tuple[str, int]]:
        """(host, port) of every broker of the cluster, as the producer last learned them."""
        return sorted((broker.host, broker.port) for broker in self._producer.client.cluster.brokers())

    def refresh_metadata(self) -> None:
        """Have the producer ask the cluster for its brokers and leaders again (in the background)."""
        self._producer.client.force_metadata_update()

    def unconfirmed_for(self) -> float:
        """Seconds the oldest append still waiting for the log has waited (0 when none waits)."""
        return time.monotonic() - min(w.since for w in self._appends.values()) if self._appends else 0.0

    def waiting(self) -> int:
        """Events appended and not settled yet."""
        return sum(len(w.partitions) for w in self._appends.values())

    def stalled_partition(self, longer_than: float) -> tuple[int | None, float] | None:
        """(partition, since: wall-clock seconds) of the oldest append waiting longer than ``longer_than``
        seconds: its partition when it went to one, else None; None when no append waits that long."""
        oldest = min(self._appends.values(), key=lambda w: w.since, default=None)
        if oldest is None or time.monotonic() - oldest.since <= longer_than:
            return None
        partition = next((p for p in oldest.partitions if p is not None), None)
        if partition is None and oldest.task_ids:
            partition = self._partition_of(oldest.task_ids[0])
        return partition, time.time() - (time.monotonic() - oldest.since)

    def in_sync_replicas(self) -> dict[int, int]:
        """Each partition of the topic with its in-sync replica count, as the producer last learned them."""
        # aiokafka keeps the ISR in its cluster metadata without a public accessor.
        partitions = self._producer.client.cluster._partitions.get(self.topic, {})
        return {partition: len(metadata.isr) for partition, metadata in sorted(partitions.items())}

    @property
    def started(self) -> bool:
        return self._producer is not None

    def series(self) -> Collector:
        """The /metrics series of this role's appends."""
        return _AppendSeries(self)

    def _partition_of(self, task_id: str) -> int | None:
        partitions = self._producer.client.cluster.partitions_for_topic(self.topic)
        if not partitions:
            return None
        # The producer's default partitioner: murmur2 of the key, as every Kafka client places keys.
        return (murmur2(task_id.encode()) & 0x7FFFFFFF) % len(partitions)

    async def _settled(self, events: Sequence[TaskEvent], partitions: Sequence[int | None]) -> list[Position]:
        first = (events[0].task_id,) if events else ()
        task_id = first[0] if first else "-"
        hops.hop("append.sent", task_id)
        append = asyncio.ensure_future(self._delivered(events, partitions))
        self._appends[append] = _Waiting(time.monotonic(), tuple(partitions), first)
        append.add_done_callback(self._settle)
        metadata = await asyncio.shield(append)
        hops.hop("append.acked", task_id)
        return [Position(m.partition, m.offset) for m in metadata]

    def _settle(self, append: asyncio.Future) -> None:
        waiting = self._appends.pop(append)
        count = len(waiting.partitions)
        if append.cancelled() or append.exception() is not None:
            self.unconfirmed += count
            self._last_failure = "cancelled" if append.cancelled() else str(append.exception())
        else:
            self.confirmed += count

    async def _delivered(self, events: Sequence[TaskEvent], partitions: Sequence[int | None]) -> list[Any]:
        """Send ``events`` and wait for their confirmation, on a new producer when this one is stuck."""
        deadline = time.monotonic() + self.deadline
        sent_before = False
        while True:
            generation, sent_at = self._generation, time.monotonic()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    deliveries = [await self._send(event, partition) for event, partition in zip(events, partitions)]
            except TimeoutError:
                raise AppendTimeout(events[0], self.deadline) from None
            except WEDGED:
                if not await self._replace(generation, "it was closed"):
                    await asyncio.sleep(RETRY_BACKOFF_S)
                continue
            except KafkaError as exc:
                if not _retriable(exc):
                    raise
                await asyncio.sleep(RETRY_BACKOFF_S)
                continue
            if sent_before:
                self.resent += len(events)
            elif self.metrics is not None:
                for event in events:
                    self.metrics.events_appended.labels(type(event).__name__).inc()
            sent_before = True
            delivered = asyncio.gather(*deliveries)
            delivered.add_done_callback(partial(self._acknowledged, generation))
            outcome = await self._outcome(delivered, generation, sent_at, deadline)
            if outcome == "timed out":
                raise AppendTimeout(events[0], self.deadline)
            if outcome == "replaced":
                continue
            exc = delivered.exception()
            if exc is None:
                return delivered.result()
            if isinstance(exc, WEDGED) or self._sender_stopped():
                if not await self._replace(generation, f"{type(exc).__name__}: {exc}"):
                    await asyncio.sleep(RETRY_BACKOFF_S)
            elif not _retriable(exc):
                raise exc
            elif time.monotonic() < deadline:
                await asyncio.sleep(RETRY_BACKOFF_S)

    async def _outcome(self, delivered: asyncio.Future, generation: int, sent_at: float,
                       deadline: float) -> str:
        """Wait for ``delivered``: ``"settled"``, ``"timed out"`` at the deadline, or ``"replaced"`` when
        the producer made no progress for a stall period and a new one took its place."""
        stall_deadline = sent_at + self.stall_after
        while True:
            wake = min(deadline, stall_deadline) - time.monotonic()
            done, _ = await asyncio.wait({delivered}, timeout=max(wake, 0))
            if done:
                return "settled"
            now = time.monotonic()
            if now >= deadline:
                return "timed out"
            if self._generation != generation:
                return "replaced"
            if self._acknowledged_at > sent_at and not self._sender_stopped():
                # The producer confirms other appends: this one waits on its partition's leader.
                stall_deadline = self._acknowledged_at + self.stall_after
                continue
            if await settles_on_waking(delivered):  # acknowledgements that waited out a pause of this process
                return "settled"
            if self._acknowledged_at > sent_at:
                continue
            if await self._replace(generation, f"no acknowledgement for {self.stall_after:g} s"):
                return "replaced"
            stall_deadline = now + self.stall_after  # no new producer could start: wait on this one

    def _acknowledged(self, generation: int, delivered: asyncio.Future) -> None:
        if delivered.cancelled():
            return
        if delivered.exception() is None and generation == self._generation:
            self._acknowledged_at = time.monotonic()

    def _sender_stopped(self) -> bool:
        # A producer whose sender task ended sends nothing more; aiokafka does not restart it.
        sender = self._producer._sender.sender_task
        return sender is not None and sender.done()

    async def _replace(self, generation: int, why: str) -> bool:
        """Put a new producer in the place of the one of ``generation`` (once, whoever asks first);
        False when no new producer could start (the brokers are away), and the old one stays."""
        async with self._replacing:
            if self._generation != generation:
                return True
            try:
                producer = await asyncio.wait_for(self._started_producer(), self.stall_after)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.info("%s: producer stuck (%s); a new one could not start yet: %s", self._client_id, why,
                         exc or type(exc).__name__)
                return False
            old, self._producer = self._producer, producer
            self._generation += 1
            self.replacements += 1
            log.warning("%s: producer replaced (%s); appends not confirmed are sent again", self._client_id, why)
            asyncio.create_task(_abandoned(old))
            return True

    async def _send(self, event: TaskEvent, partition: int | None) -> asyncio.Future:
        return await self._producer.send(
            self.topic,
            value=self.codec.encode(event),
            key=event.task_id.encode(),
            partition=partition,
            timestamp_ms=event.occurred_at,
        )

    async def record_dead_letter(self, letter: DeadLetter) -> None:
        """Copy an undecodable record to the dead-letter topic, with why and where it was."""
        log.error("dead letter %s", letter.describe())
        headers = [
            ("source-topic", letter.topic.encode()),
            ("source-partition", str(letter.partition).encode()),
            ("source-offset", str(letter.offset).encode()),
            ("reason", letter.reason.encode()),
        ]
        if letter.key is not None:
            headers.append(("source-key", letter.key))
        await self._producer.send_and_wait(
            self.settings.dead_letter_topic,
            value=letter.value,
            key=f"{letter.topic}:{letter.partition}:{letter.offset}".encode(),
            headers=headers,
        )


class _Waiting(NamedTuple):
    since: float  # monotonic
    partitions: tuple[int | None, ...]  # one per event: where it was sent, None for its task's partition
    task_ids: tuple[str, ...]  # the first event's


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, KafkaTimeoutError) or getattr(exc, "retriable", False)


async def _closed(producer: AIOKafkaProducer, within: float) -> None:
    """Close ``producer``, giving it ``within`` seconds to deliver what it holds."""
    flushed = asyncio.ensure_future(producer.flush())
    await asyncio.wait({flushed}, timeout=within)
    if flushed.done():
        await producer.stop()
    else:  # the brokers are away: what it holds is given up (counted by the appends that wait on it)
        flushed.cancel()
        await _abandoned(producer)


async def _abandoned(producer: AIOKafkaProducer) -> None:
    """Stop ``producer`` without delivering what it holds (a new producer sends that again).

    aiokafka's own ``stop`` waits for its batches to be delivered, which a stuck producer never does;
    so its sender is stopped and its connections closed here (private parts: there is no public way)."""
    sender = producer._sender.sender_task
    if sender is not None and not sender.done():
        sender.cancel()
        await asyncio.wait({sender})
    producer._closed = True
    await producer.client.close()


class _AppendSeries(Collector):
    def __init__(self, event_log: EventLog) -> None:
        self._log = event_log

    def collect(self) -> Iterator[Metric]:
        event_log = self._log
        yield GaugeMetricFamily("ledger_appends_waiting", "Events appended and not yet confirmed by the log.",
                                value=event_log.waiting())
        yield GaugeMetricFamily("ledger_append_oldest_wait_seconds", "How long the oldest append still waiting "
                                "for the log has waited.", value=event_log.unconfirmed_for())
        yield CounterMetricFamily("ledger_producer_replacements", "Producers replaced because they made no "
                                  "progress for a stall period or could not recover.", value=event_log.replacements)
        in_sync = GaugeMetricFamily("ledger_partition_in_sync_replicas", "In-sync replicas of each partition of "
                                    "the task-events topic, as this role's producer last learned them.",
                                    labels=["partition"])
        if event_log.started:
            for partition, count in event_log.in_sync_replicas().items():
                in_sync.add_metric([str(partition)], count)
        yield in_sync
