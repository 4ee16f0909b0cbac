"""A consumer-group member on the task-events topic, with manual offset commits (workers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ledger.contract.codec import Codec
from ledger.kafka.consumer import DecodingConsumer
from ledger.kafka.records import DeadLetterSink, log_dead_letter
from ledger.settings import Settings

PartitionsCallback = Callable[[set[int]], Awaitable[None]]
StartsCallback = Callable[[set[int]], Awaitable[dict[int, int]]]


async def _nothing(partitions: set[int]) -> None:
    return None


class _Listener(ConsumerRebalanceListener):
    """Keeps the partitions a member hands out in step with the group, around the owner's callbacks."""

    def __init__(self, member: GroupConsumer, assigned: PartitionsCallback, revoked: PartitionsCallback) -> None:
        self._member = member
        self._assigned = assigned
        self._revoked = revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked}
        await self._revoked(partitions)
        self._member.forget(partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in assigned}
        await self._member.start_reading(assigned)
        self._member.own(partitions)
        await self._assigned(partitions)


class GroupConsumer(DecodingConsumer):
    """Owns a share of the partitions; resumes each from the group's committed offset.

    Nothing is committed automatically: the owner commits the offset below which every event's
    effects are durable, so a member that dies hands over without losing a transition. An owner that
    keeps its offsets elsewhere (the projectors, in their database) says where each newly assigned
    partition starts with ``starts``.
    """

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        *,
        on_assigned: PartitionsCallback = _nothing,
        on_revoked: PartitionsCallback = _nothing,
        starts: StartsCallback | None = None,
        codec: Codec | None = None,
        dead_letters: DeadLetterSink = log_dead_letter,
        client_id: str | None = None,
        max_records: int = 1_000,
    ) -> None:
        options = dict(
            client_id=client_id or f"{settings.client_id}-worker",
            group_id=group_id,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 5),
            rebalance_timeout_ms=max(settings.session_timeout_ms, 10_000),
            request_timeout_ms=max(settings.session_timeout_ms, 10_000) + 2_000,
        )
        super().__init__(settings, options, codec, dead_letters, max_records)
        self._listener = _Listener(self, on_assigned, on_revoked)
        self._starts = starts
        self._owned: set[int] = set()

    async def start(self) -> None:
        await super().start()
        self._consumer.subscribe([self.topic], listener=self._listener)

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def reads(self, partition: int) -> bool:
        # aiokafka can fetch a newly assigned partition before the assignment callback has run; an
        # owner that has not set the partition up yet would drop its records, and read on past them.
        return partition in self._owned

    async def start_reading(self, assigned: set[TopicPartition]) -> None:
        """Read each newly assigned partition from where the owner's ``starts`` says; without it, on a
        broker that can serve a later batch before an earlier one, from its committed offset (0 when
        none: ledger's topics are never truncated) with that offset known, so that the first fetch is
        checked for holes like every later one. Without that, a first fetch that began past a batch
        not yet readable skipped that batch for good (a task created there never reached a worker)."""
        if self._starts is not None:
            self.rewind(await self._starts({tp.partition for tp in assigned}))
        elif self.profile is not None and not self.profile.serves_batches_in_order:
            self.rewind({tp.partition: await self._consumer.committed(tp) or 0 for tp in assigned})

    def rewind(self, starts: Mapping[int, int]) -> None:
        """Read each partition of ``starts`` again from its offset (together, with no await between:
        nothing is fetched in between)."""
        for partition, start in starts.items():
            self._consumer.seek(TopicPartition(self.topic, partition), start)
            self._positions[partition] = start

    def own(self, partitions: set[int]) -> None:
        """Hand out records of ``partitions`` from now on (called just before ``on_assigned``, whose
        code up to its first ``await`` runs before any record is handed out)."""
        self._owned |= partitions

    def position(self, partition: int) -> int | None:
        """Next offset to read in ``partition``, once something was fetched from it."""
        return self._positions.get(partition)

    def forget(self, partitions: set[int]) -> None:
        """Stop handing out records of ``partitions`` and drop their read positions. Those still
        assigned (another worker claimed them before the group told this one) are paused until the
        group assigns anew."""
        self._owned -= partitions
        still_assigned = [tp for tp in self._consumer.assignment() if tp.partition in partitions]
        if still_assigned:
            self._consumer.pause(*still_assigned)
        for partition in partitions:
            self._positions.pop(partition, None)
            self._holes.pop(partition, None)

    async def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commit, per partition, the offset of the next event not yet fully handled."""
        await self._consumer.commit(
            {TopicPartition(self.topic, p): OffsetAndMetadata(o, "") for p, o in next_offsets.items()}
        )
