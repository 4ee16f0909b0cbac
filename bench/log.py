"""Codec and Kafka-log throughput; prints a markdown table.

    python bench/log.py [--events 200000] [--produce 100000] [--bootstrap HOST:PORT]

Without --bootstrap (or LEDGER_BOOTSTRAP) it starts the embedded broker. Targets (issue 3):
decode >= 300k events/s on one core; produce >= 30k events/s of ~500-byte events, acks=all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from contextlib import nullcontext
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger.contract.codec import Codec  # noqa: E402
from ledger.contract.events import (  # noqa: E402
    ElicitationRequested,
    ResponseSubmitted,
    TaskCompleted,
    TaskCreated,
    TaskEvent,
    TaskStarted,
)
from ledger.kafka.appender import EventLog  # noqa: E402
from ledger.kafka.broker import EmbeddedBroker, free_port  # noqa: E402
from ledger.kafka.reader import LogReader  # noqa: E402
from ledger.kafka.topics import ensure_topics  # noqa: E402
from ledger.settings import Settings  # noqa: E402

SCHEMA = json.dumps(
    {"type": "object", "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}}, "required": ["approved"]}
)


def approve_expense_flow(task_id: str) -> list[TaskEvent]:
    """The five events of one approve_expense task, as the engine writes them."""
    server = {"task_id": task_id, "principal": "alice", "actor": "server:bench-1"}
    worker = {"task_id": task_id, "principal": "alice", "actor": "worker:bench-1"}
    return [
        TaskCreated(**server, tool="approve_expense", arguments_json='{"amount": 42.0, "description": "taxi"}',
                    ttl_ms=900_000, poll_interval_ms=500, protocol="mcp-2026-07-28/tasks"),
        TaskStarted(**worker, attempt=1),
        ElicitationRequested(**worker, elicitation_id=f"{task_id}:0", sequence=0,
                             message="Approve expense of 42.0: taxi?", requested_schema_json=SCHEMA),
        ResponseSubmitted(**server, elicitation_id=f"{task_id}:0", action="accept",
                          content_json='{"approved": true, "note": "ok"}', protocol="mcp-2026-07-28/tasks"),
        TaskCompleted(**worker, result_json='{"content": [{"type": "text", "text": "approved 42.0"}], "isError": false}'),
    ]


@cache
def _padding(size: int) -> int:
    """Description length that makes a TaskCreated encode to about ``size`` bytes."""
    probe = TaskCreated(task_id="task-000", principal="alice", actor="server:bench-1", tool="approve_expense",
                        arguments_json=json.dumps({"description": ""}), protocol="mcp-2026-07-28/tasks")
    return size - len(Codec().encode(probe))


def sized_event(task_id: str, size: int = 500) -> TaskEvent:
    """A TaskCreated whose encoded form is about ``size`` bytes."""
    return TaskCreated(task_id=task_id, principal="alice", actor="server:bench-1", tool="approve_expense",
                       arguments_json=json.dumps({"description": "x" * _padding(size)}),
                       protocol="mcp-2026-07-28/tasks")


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def bench_codec(n: int) -> list[tuple[str, str, str]]:
    codec = Codec()
    mix = [e for i in range(200) for e in approve_expense_flow(f"task-{uuid.uuid4().hex}")]
    large = [sized_event(f"task-{i:03d}") for i in range(200)]
    rows = []
    for label, events in (("approve_expense flow mix", mix), ("~500-byte TaskCreated", large)):
        encoded = [codec.encode(e) for e in events]
        size = sum(map(len, encoded)) / len(encoded)
        rounds = max(1, n // len(events))
        start = time.process_time()
        for _ in range(rounds):
            for event in events:
                codec.encode(event)
        encode_s = time.process_time() - start
        start = time.process_time()
        for _ in range(rounds):
            for data in encoded:
                codec.decode(data)
        decode_s = time.process_time() - start
        count = rounds * len(events)
        rows.append((f"encode, {label} ({size:.0f} B)", rate(count, encode_s), "events/s (CPU time, one core)"))
        rows.append((f"decode, {label} ({size:.0f} B)", rate(count, decode_s), "events/s (CPU time, one core)"))
    return rows


async def bench_kafka(bootstrap: str, n: int) -> list[tuple[str, str, str]]:
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}", linger_ms=5)
    await ensure_topics(settings)
    events = [sized_event(f"task-{i % 1000}") for i in range(n)]
    size = len(Codec().encode(events[0]))
    async with EventLog(settings) as log:
        start = time.perf_counter()
        window = 5_000  # bounded in-flight appends
        for i in range(0, n, window):
            await log.append_many(events[i : i + window])
        produce_s = time.perf_counter() - start
    start = time.perf_counter()
    read = 0
    async with LogReader(settings) as reader:
        async for batch in reader.catch_up():
            read += len(batch)
    consume_s = time.perf_counter() - start
    assert read == n, f"read {read} of {n}"
    return [
        (f"produce acks=all, {size} B events, linger 5 ms", rate(n, produce_s), "events/s (wall, until every ack)"),
        (f"consume + decode from offset 0, {size} B events", rate(n, consume_s), "events/s (wall)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="codec events per measurement")
    parser.add_argument("--produce", type=int, default=100_000, help="events to produce and consume")
    parser.add_argument("--bootstrap", default=os.environ.get("LEDGER_BOOTSTRAP"), help="an existing Kafka")
    args = parser.parse_args()

    rows = bench_codec(args.events)
    broker = nullcontext() if args.bootstrap else EmbeddedBroker(port=free_port())
    with broker as embedded:
        bootstrap = args.bootstrap or embedded.bootstrap
        rows += asyncio.run(bench_kafka(bootstrap, args.produce))
    where = args.bootstrap or "embedded Tansu (memory storage)"
    print(f"\nledger log benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, broker {where}\n")
    print("| measure | rate | unit |\n|---|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
