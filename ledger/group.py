"""A consumer-group member on the task-events topic, with manual offset commits (workers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ledger.codec import Codec
from ledger.consumer import DecodingConsumer
from ledger.records import DeadLetterSink, log_dead_letter
from ledger.settings import Settings

PartitionsCallback = Callable[[set[int]], Awaitable[None]]


async def _nothing(partitions: set[int]) -> None:
    return None


class _Listener(ConsumerRebalanceListener):
    def __init__(self, assigned: PartitionsCallback, revoked: PartitionsCallback) -> None:
        self._assigned = assigned
        self._revoked = revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._assigned({tp.partition for tp in assigned})


class GroupConsumer(DecodingConsumer):
    """Owns a share of the partitions; resumes each from the group's committed offset.

    Nothing is committed automatically: the owner commits the offset below which every event's
    effects are durable, so a member that dies hands over without losing a transition.
    """

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        *,
        on_assigned: PartitionsCallback = _nothing,
        on_revoked: PartitionsCallback = _nothing,
        codec: Codec | None = None,
        dead_letters: DeadLetterSink = log_dead_letter,
        client_id: str | None = None,
        max_records: int = 1_000,
    ) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            client_id=client_id or f"{settings.client_id}-worker",
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 5),
            rebalance_timeout_ms=max(settings.session_timeout_ms, 10_000),
        )
        super().__init__(settings, consumer, codec, dead_letters, max_records)
        self._listener = _Listener(on_assigned, on_revoked)
        self._starts: dict[int, int] = {}

    async def start(self) -> None:
        await super().start()
        self._consumer.subscribe([self.topic], listener=self._listener)

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def position(self, partition: int) -> int | None:
        """Next offset to read in ``partition``, once something was fetched from it."""
        return self._positions.get(partition)

    async def note_starts(self, partitions: set[int]) -> None:
        """Remember where reading newly assigned partitions begins: the committed offset, else 0."""
        for partition in partitions:
            committed = await self._consumer.committed(TopicPartition(self.topic, partition))
            self._starts[partition] = committed or 0

    def next_offset(self, partition: int) -> int:
        """Next offset to hand out in ``partition`` (its start until something was fetched)."""
        return self._positions.get(partition, self._starts.get(partition, 0))

    def highwater(self, partition: int) -> int | None:
        """The end of ``partition`` as the last fetch from it reported (None before any fetch)."""
        return self._consumer.highwater(TopicPartition(self.topic, partition))

    def forget(self, partitions: set[int]) -> None:
        """Drop the read positions of partitions this member no longer owns."""
        for partition in partitions:
            self._positions.pop(partition, None)
            self._starts.pop(partition, None)
            self._holes.pop(partition, None)

    async def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commit, per partition, the offset of the next event not yet fully handled."""
        await self._consumer.commit(
            {TopicPartition(self.topic, p): OffsetAndMetadata(o, "") for p, o in next_offsets.items()}
        )
