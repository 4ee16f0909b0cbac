"""Appending events to the task-events topic: acks=all, keyed by task id, batched."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from ledger.codec import Codec
from ledger.events import TaskEvent
from ledger.metrics import Metrics
from ledger.profiles import broker_profile
from ledger.records import DeadLetter, Position
from ledger.settings import Settings

log = logging.getLogger(__name__)


class EventLog:
    """The write side of the log. ``append`` returns once the event is durable (acks=all).

    Concurrent appends are batched by the producer (``LEDGER_LINGER_MS``), so callers append
    one event at a time and still get batched produces.
    """

    def __init__(self, settings: Settings, codec: Codec | None = None, client_id: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.codec = codec or Codec()
        self.topic = settings.events_topic
        self._client_id = client_id or f"{settings.client_id}-producer"
        self._producer: AIOKafkaProducer | None = None

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
            request_timeout_ms=30_000,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> EventLog:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def append(self, event: TaskEvent) -> Position:
        delivery = await self._send(event)
        metadata = await delivery
        return Position(metadata.partition, metadata.offset)

    async def append_many(self, events: Sequence[TaskEvent]) -> list[Position]:
        """Append in order (per task) and wait for all; one batch where the producer can."""
        deliveries = [await self._send(event) for event in events]
        return [Position(m.partition, m.offset) for m in await asyncio.gather(*deliveries)]

    async def _send(self, event: TaskEvent) -> asyncio.Future:
        if self.metrics is not None:
            self.metrics.events_appended.labels(type(event).__name__).inc()
        return await self._producer.send(
            self.topic,
            value=self.codec.encode(event),
            key=event.task_id.encode(),
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
