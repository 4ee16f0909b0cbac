"""A one-broker Apache Kafka cluster SIGKILLed and restarted on its data while tasks wait: no event the
log acknowledged is lost, and the waiting tasks are still answered and completed by the same server
and worker, which are not restarted. Prints its figures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ledger.kafka.cluster import LocalCluster
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.flows import asked, done
from tests.support.outcomes import checked_log
from tests.support.raw_http import ModernClient
from tests.support.spawn import ledger_roles
from tests.support.stack import until

pytestmark = pytest.mark.slow

TASKS = 40


@pytest.fixture
def lone_broker(broker_kind: str, tmp_path: Path) -> Iterator[LocalCluster]:
    if broker_kind != "kafka":
        pytest.skip("crashes an Apache Kafka broker: runs with --broker kafka")
    cluster = LocalCluster(tmp_path / "kafka", brokers=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_a_crashed_broker_restarted_on_its_data_loses_nothing(lone_broker: LocalCluster, settings: Settings,
                                                                    figures) -> None:
    settings = replace(settings, bootstrap=lone_broker.bootstrap)
    await ensure_topics(settings)
    (node,) = lone_broker.nodes
    with ledger_roles(settings) as (url, roles):
        async with ModernClient(url) as client:
            task_ids = [(await client.result("tools/call", {"name": "approve_expense", "arguments": {
                "amount": i, "description": "before the crash"}}))["taskId"] for i in range(TASKS)]
            questions = {}
            for task_id in task_ids:
                questions[task_id] = next(iter((await until(lambda: asked(client, task_id), 60))["inputRequests"]))
            answered_before = task_ids[: TASKS // 2]
            for task_id in answered_before:
                await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
                    questions[task_id]: {"action": "accept", "content": {"approved": True}}}})
            for task_id in answered_before:
                await until(lambda: done(client, task_id), 60)

            lone_broker.kill(node.node_id)
            killed_at = time.monotonic()
            lone_broker.launch(node.node_id)
            await asyncio.to_thread(lone_broker.wait_ready, 120)
            back_s = time.monotonic() - killed_at

            for task_id in task_ids[TASKS // 2:]:
                task = await until(lambda: asked(client, task_id), 120)
                assert next(iter(task["inputRequests"])) == questions[task_id]
                await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
                    questions[task_id]: {"action": "accept", "content": {"approved": True}}}})
            for task_id in task_ids:
                await until(lambda: done(client, task_id), 120)
            resumed_s = time.monotonic() - killed_at
    _, on_topic, confirmed, unconfirmed = await checked_log(settings, roles, task_ids)
    figures(f"1 broker SIGKILLed with {TASKS // 2} tasks waiting and {TASKS // 2} completed, restarted on its data "
            f"({back_s:.1f} s to answer again): {confirmed} events confirmed before and after, {on_topic} on the "
            f"topic ({unconfirmed} not confirmed); the waiting tasks kept their questions and all completed "
            f"{resumed_s:.1f} s after the crash, without restarting the server or the worker")
