"""A corrupt record and a record with an unknown schema fingerprint land on the topic between real
tasks: both are reported, counted and skipped by the server and the worker (and copied once to the
dead-letter topic); every task around them completes. Prints its figures."""

from __future__ import annotations

import asyncio
import os
import re

import httpx2 as httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ledger.contract.codec import MARKER
from ledger.kafka.broker import free_port
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.raw_http import ModernClient
from tests.support.spawn import spawned
from tests.support.stack import approve_through_tasks, until

pytestmark = pytest.mark.slow

DEMO = "examples/demo.py"


async def dead_letter_topic(settings: Settings, expected: int) -> list[dict[str, str]] | None:
    """The headers of the records on the dead-letter topic, once there are ``expected`` of them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(settings.dead_letter_topic, 0)
        consumer.assign([partition])
        consumer.seek(partition, 0)
        fetched = await consumer.getmany(partition, timeout_ms=1_000)
        records = fetched.get(partition, [])
    finally:
        await consumer.stop()
    headers = [{key: value.decode() for key, value in record.headers} for record in records]
    assert len(headers) <= expected, "an undecodable record was copied more than once"
    return headers if len(headers) == expected else None


async def approve(client: ModernClient, amount: int) -> str:
    task_id, text = await approve_through_tasks(client, amount, "around bad records")
    assert text == f"approved {amount}"
    return task_id


async def test_bad_records_are_reported_counted_and_skipped(settings: Settings, figures) -> None:
    await ensure_topics(settings)
    port = free_port()
    with spawned(["worker", DEMO], settings, "ledger worker"), \
            spawned(["server", DEMO, "--port", str(port)], settings, "serving"):
        url = f"http://127.0.0.1:{port}/mcp"
        async with ModernClient(url) as client:
            await approve(client, 1)
            producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
            await producer.start()
            try:
                for partition in range(settings.partitions):  # wherever the next tasks land
                    await producer.send_and_wait(settings.events_topic, b"\x00\x01not avro at all", partition=partition)
                    await producer.send_and_wait(settings.events_topic, MARKER + os.urandom(8) + b"\x02",
                                                 partition=partition)
            finally:
                await producer.stop()
            later = await asyncio.gather(*(approve(client, amount) for amount in range(2, 6)))
        bad = 2 * settings.partitions
        async with httpx.AsyncClient() as http:

            async def counted() -> float | None:
                text = (await http.get(url.replace("/mcp", "/metrics"))).text
                value = float(re.search(r"^ledger_undecodable_records (\S+)$", text, re.M).group(1))
                return value if value == bad else None

            server_count = await until(counted, 30)
        copied = await until(lambda: dead_letter_topic(settings, bad), 30)
    reasons = [header["reason"] for header in copied]
    assert sum("not a single-object-encoded record" in r for r in reasons) == settings.partitions, reasons
    assert sum("fingerprint" in r for r in reasons) == settings.partitions, reasons
    figures(f"{bad} bad records ({settings.partitions} corrupt, {settings.partitions} of an unknown schema) "
          f"among 5 tasks: the server counted {server_count:.0f} and skipped them; all {1 + len(later)} tasks "
          "completed")
