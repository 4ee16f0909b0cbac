"""Reading the whole task-events topic (every partition, no consumer group), as projections do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping

from aiokafka import TopicPartition

from ledger.contract.codec import Codec
from ledger.kafka.consumer import DecodingConsumer, end_offsets, topic_partitions
from ledger.kafka.records import DeadLetterSink, LogRecord, log_dead_letter
from ledger.kafka.topics import TopicError
from ledger.settings import Settings


class LogReader(DecodingConsumer):
    """Reads every partition (or the ``partitions`` given) from a checkpoint (next offset per
    partition) or from the start.

    Catch-up is judged against the high watermark each fetch reports.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        checkpoint: Mapping[int, int] | None = None,
        partitions: Collection[int] | None = None,
        codec: Codec | None = None,
        dead_letters: DeadLetterSink = log_dead_letter,
        client_id: str | None = None,
        max_records: int = 5_000,
        partition_fetch_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        options = dict(
            client_id=client_id or f"{settings.client_id}-reader",
            group_id=None,
            max_partition_fetch_bytes=partition_fetch_bytes,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        super().__init__(settings, options, codec, dead_letters, max_records)
        self._checkpoint = dict(checkpoint or {})
        self._only = set(partitions) if partitions is not None else None
        self._partitions: list[TopicPartition] = []

    async def start(self) -> None:
        await super().start()
        partitions = await topic_partitions(self._consumer, self.topic)
        if not partitions:
            await self._consumer.stop()
            raise TopicError(f"topic {self.topic} does not exist; start `ledger broker` or create the topics first")
        if self._only is not None:
            if missing := self._only - partitions:
                await self._consumer.stop()
                raise TopicError(f"topic {self.topic} has no partition {', '.join(map(str, sorted(missing)))}")
            partitions = self._only
        self._partitions = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._partitions)
        for tp in self._partitions:
            start = self._checkpoint.get(tp.partition, 0)
            self._consumer.seek(tp, start)
            self._positions[tp.partition] = start

    def partitions(self) -> list[int]:
        """The partitions this reader reads, once started."""
        return [tp.partition for tp in self._partitions]

    def positions(self) -> dict[int, int]:
        """Next offset to read per partition: the checkpoint to resume from."""
        return dict(self._positions)

    async def end_offsets(self) -> dict[int, int]:
        """The end of each partition read, as it is now."""
        return await end_offsets(self._consumer, self.profile, self.topic, self._positions)

    def caught_up(self) -> bool:
        """True when every partition has been read up to the high watermark of its last fetch."""
        for tp in self._partitions:
            highwater = self._consumer.highwater(tp)
            if highwater is None or self._positions[tp.partition] < highwater:
                return False
        return True

    def read_to_end(self, partition: int) -> bool:
        """True when ``partition`` has been read up to the high watermark of its last fetch."""
        highwater = self._consumer.highwater(TopicPartition(self.topic, partition))
        return highwater is not None and self._positions[partition] >= highwater

    def hold(self, partition: int, held: bool) -> None:
        """Stop fetching ``partition`` (or fetch it again): for a caller whose buffer of it is full."""
        tp = TopicPartition(self.topic, partition)
        if held:
            self._consumer.pause(tp)
        else:
            self._consumer.resume(tp)

    def all_reached(self, offset: int) -> bool:
        """True when every partition has been read to ``offset`` or to its end."""
        for tp in self._partitions:
            highwater = self._consumer.highwater(tp)
            position = self._positions[tp.partition]
            if position < offset and (highwater is None or position < highwater):
                return False
        return True

    def lag(self) -> int:
        """Events between the positions and the high watermarks of the last fetches."""
        return sum(self.lag_by_partition().values())

    async def follow(self) -> AsyncIterator[list[LogRecord]]:
        """Fetch forever, yielding each non-empty batch."""
        while True:
            records = await self.fetch()
            if records:
                yield records

    async def catch_up(self) -> AsyncIterator[list[LogRecord]]:
        """Yield batches until every partition is read to its high watermark."""
        while True:
            records = await self.fetch()
            if records:
                yield records
            if self.caught_up():
                return
