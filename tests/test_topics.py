from __future__ import annotations

from dataclasses import replace

import pytest

from ledger.kafka.profiles import broker_profile
from ledger.kafka.topics import TopicError, ensure_topics
from ledger.settings import Settings


async def test_creates_topics_with_the_configured_partitions(settings: Settings) -> None:
    partitions = await ensure_topics(settings)
    assert partitions == {settings.events_topic: 4, settings.dead_letter_topic: 1, settings.sign_outs_topic: 1}


async def test_is_idempotent(settings: Settings) -> None:
    assert await ensure_topics(settings) == await ensure_topics(settings)


async def test_refuses_a_partition_count_that_differs_from_the_topic(settings: Settings) -> None:
    await ensure_topics(settings)
    with pytest.raises(TopicError, match="has 4 partitions but LEDGER_PARTITIONS is 6"):
        await ensure_topics(replace(settings, partitions=6))


async def test_without_a_count_the_broker_decides_and_an_existing_topic_keeps_its_own(settings: Settings) -> None:
    unset = replace(settings, partitions=None)
    default = (await broker_profile(settings)).default_partitions
    assert (await ensure_topics(unset))[settings.events_topic] == default == {"kafka": 3, "tansu": 8}[
        (await broker_profile(settings)).name]
    other = replace(settings, topic_prefix=f"{settings.topic_prefix}-six", partitions=6)
    await ensure_topics(other)
    assert (await ensure_topics(replace(other, partitions=None)))[other.events_topic] == 6
