"""Appending events to the task-events topic: acks=all, keyed by task id, batched."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from ledger.contract.codec import Codec
from ledger.contract.events import TaskEvent
from ledger.kafka.profiles import broker_profile
from ledger.kafka.records import DeadLetter, Position
from ledger.metrics import Metrics
from ledger.settings import Settings

log = logging.getLogger(__name__)


class AppendTimeout(TimeoutError):
    """The log did not confirm an append in time. The producer keeps trying, so the event may still
    be recorded once the brokers take writes again: neither outcome may be assumed."""

    def __init__(self, event: TaskEvent, seconds: float) -> None:
        self.task_id = event.task_id
        super().__init__(f"the log did not confirm {type(event).__name__} of task {event.task_id} within "
                         f"{seconds:g} s; it may still be recorded once the brokers take writes again")


class EventLog:
    """The write side of the log. ``append`` returns once the event is durable (acks=all).

    Concurrent appends are batched by the producer (``LEDGER_LINGER_MS``), so callers append
    one event at a time and still get batched produces. With ``confirm_within`` (seconds) an append
    the log has not confirmed by then raises ``AppendTimeout``; without it, an append waits as long
    as the log takes (a worker's runs just wait for the brokers to come back).
    """

    def __init__(self, settings: Settings, codec: Codec | None = None, client_id: str | None = None,
                 metrics: Metrics | None = None, confirm_within: float | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.codec = codec or Codec()
        self.topic = settings.events_topic
        self.confirm_within = confirm_within
        self.confirmed = 0  # events the log acknowledged
        self.unconfirmed = 0  # events whose append timed out, failed or was given up (the log may have them)
        self._client_id = client_id or f"{settings.client_id}-producer"
        self._producer: AIOKafkaProducer | None = None
        self._waiting: dict[int, float] = {}  # id of a waiting append -> when it was made

    async def start(self) -> None:
        profile = await broker_profile(self.settings.bootstrap)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            client_id=self._client_id,
            acks="all",
            # Where the broker has it, retries are de-duplicated by the broker; events are also
            # de-duplicated by event_id downstream, which is all the embedded broker allows.
            enable_idempotence=profile.idempotent_producer,
            linger_ms=self.settings.linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=self.settings.produce_timeout_ms,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            log.info("%s: %d events appended and confirmed by the log, %d not confirmed", self._client_id,
                     self.confirmed, self.unconfirmed)

    async def __aenter__(self) -> EventLog:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def append(self, event: TaskEvent, partition: int | None = None) -> Position:
        """Append ``event`` to its task's partition (or to ``partition``); returns where it landed."""
        return (await self._confirmed([event], [partition]))[0]

    async def append_many(self, events: Sequence[TaskEvent]) -> list[Position]:
        """Append in order (per task) and wait for all; one batch where the producer can."""
        return await self._confirmed(events, [None] * len(events))

    def brokers(self) -> list[tuple[str, int]]:
        """(host, port) of every broker of the cluster, as the producer last learned them."""
        return sorted((broker.host, broker.port) for broker in self._producer.client.cluster.brokers())

    def refresh_metadata(self) -> None:
        """Have the producer ask the cluster for its brokers and leaders again (in the background)."""
        self._producer.client.force_metadata_update()

    def unconfirmed_for(self) -> float:
        """Seconds the oldest append still waiting for the log has waited (0 when none waits)."""
        return time.monotonic() - min(self._waiting.values()) if self._waiting else 0.0

    async def _confirmed(self, events: Sequence[TaskEvent], partitions: Sequence[int | None]) -> list[Position]:
        try:
            if self.confirm_within is None:
                deliveries = [await self._send(event, partition) for event, partition in zip(events, partitions)]
                metadata = [await deliveries[0]] if len(deliveries) == 1 else await asyncio.gather(*deliveries)
            else:
                metadata = await self._confirmed_in_time(events, partitions, self.confirm_within)
        except BaseException:  # timed out, failed or cancelled: the log may have the events or not
            self.unconfirmed += len(events)
            raise
        self.confirmed += len(events)
        return [Position(m.partition, m.offset) for m in metadata]

    async def _confirmed_in_time(self, events: Sequence[TaskEvent], partitions: Sequence[int | None],
                                 seconds: float) -> list[Any]:
        deliveries: list[asyncio.Future] = []
        made = time.monotonic()
        try:
            async with asyncio.timeout(seconds):
                for event, partition in zip(events, partitions):
                    deliveries.append(await self._send(event, partition))
                # The producer goes on delivering after a timeout; only the waiting for it stops here.
                return await asyncio.shield(self._watch(deliveries, made))
        except TimeoutError:
            if len(deliveries) < len(events):  # it timed out handing events to the producer
                self._watch(deliveries, made)
            raise AppendTimeout(events[0], seconds) from None

    def _watch(self, deliveries: list[asyncio.Future], made: float) -> asyncio.Future:
        """One future for ``deliveries``, counted as waiting until the log confirms (or fails) them all."""
        delivered = asyncio.gather(*deliveries)
        self._waiting[id(delivered)] = made
        delivered.add_done_callback(self._settled)
        return delivered

    def _settled(self, delivered: asyncio.Future) -> None:
        self._waiting.pop(id(delivered), None)
        if not delivered.cancelled():
            delivered.exception()  # retrieved here: after a timeout nobody else waits for it

    async def _send(self, event: TaskEvent, partition: int | None) -> asyncio.Future:
        if self.metrics is not None:
            self.metrics.events_appended.labels(type(event).__name__).inc()
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
