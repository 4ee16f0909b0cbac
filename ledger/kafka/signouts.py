"""Web sessions signed out, shared by every server on the log through a topic of their own.

A web session is a signed cookie (``ledger.http.login``) that every server sharing the signing key
accepts until it expires. Signing out must end it on all of them, so a sign-out is a record on
``<prefix>.sign-outs``: the session id as key, the moment the session would have expired as value.
Each server reads the topic from its start before it serves, follows it while it runs, and refuses
a session the topic names. Nothing there is needed after its session would have expired, so the topic
keeps records for as long as a session lasts, and a server forgets them at their expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ledger.kafka.consumer import set_fetch_wait, topic_partitions
from ledger.kafka.security import AUTHORIZATION_ERRORS, connection, not_allowed
from ledger.kafka.topics import TopicError
from ledger.settings import Settings

log = logging.getLogger(__name__)

FORGET_EVERY = 1_000  # sign-outs applied between two sweeps of the expired ones
# The first read ends at the high watermark, which an empty fetch brings; the embedded broker holds an
# empty fetch for its whole wait (500 ms held a server's start for a second).
READ_WAIT_MS = 20
FOLLOW_WAIT_MS = 500


class SignOuts:
    """The sessions signed out on any server, until they would have expired."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._partition = TopicPartition(settings.sign_outs_topic, 0)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._ended: dict[str, int] = {}  # session id -> when it would have expired (epoch seconds)
        self._applied = 0
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read every sign-out on the topic, then follow it."""
        settings = self._settings
        self._producer = AIOKafkaProducer(**connection(settings), client_id=self._client_id,
                                          acks="all", request_timeout_ms=settings.produce_timeout_ms)
        self._consumer = AIOKafkaConsumer(**connection(settings), client_id=self._client_id,
                                          group_id=None, enable_auto_commit=False, fetch_max_wait_ms=READ_WAIT_MS,
                                          metadata_max_age_ms=2_000)
        await self._producer.start()
        await self._consumer.start()
        if not await topic_partitions(self._consumer, self._partition.topic):
            raise TopicError(f"topic {self._partition.topic} does not exist; create it with `ledger topics --create`")
        self._consumer.assign([self._partition])
        await self._consumer.seek_to_beginning(self._partition)
        try:
            while (highwater := self._consumer.highwater(self._partition)) is None or \
                    await self._consumer.position(self._partition) < highwater:
                self._apply(await self._consumer.getmany(self._partition, timeout_ms=READ_WAIT_MS))
        except AUTHORIZATION_ERRORS:
            raise not_allowed(settings, f"read {self._partition.topic}") from None
        set_fetch_wait(self._consumer, FOLLOW_WAIT_MS)
        self._following = asyncio.create_task(self._follow(), name="sign-outs")

    async def stop(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def record(self, session_id: str, expires: int) -> None:
        """Sign the session out, here at once and on every server once the log confirms it."""
        self._ended[session_id] = expires
        await self._producer.send_and_wait(self._partition.topic, key=session_id.encode(),
                                           value=str(expires).encode(), partition=0)

    def ended(self, session_id: str) -> bool:
        expires = self._ended.get(session_id)
        return expires is not None and expires >= time.time()

    async def _follow(self) -> None:
        while True:
            try:
                self._apply(await self._consumer.getmany(self._partition, timeout_ms=5_000))
            except KafkaError as exc:  # the consumer goes on from where it was once the brokers answer
                log.warning("reading sign-outs: %s", exc)
                await asyncio.sleep(1)

    def _apply(self, batches: dict[TopicPartition, list]) -> None:
        for records in batches.values():
            for record in records:
                try:
                    self._ended[record.key.decode()] = int(record.value)
                except (AttributeError, UnicodeDecodeError, ValueError, TypeError):
                    log.warning("sign-outs: record at offset %d is not a session id and an expiry", record.offset)
                self._applied += 1
                if self._applied % FORGET_EVERY == 0:
                    now = time.time()
                    self._ended = {session: expires for session, expires in self._ended.items() if expires >= now}
