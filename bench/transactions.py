"""What Kafka transactions would cost a worker's run, against what ledger does, on the 3-broker cluster.

    python bench/transactions.py [--runs 600] [--events 3] [--concurrency 1 16]

A worker run that resumes an answered approve_expense appends three events (started, a step,
completed). ledger appends them with the idempotent producer (acks=all) one after another, each
awaited before the tool goes on, and commits the group's offsets twice a second, apart from any
run. The transactional alternative (the consume-process-produce pattern) puts a run's events and
its offset commit in one transaction: begin, the events, send_offsets_to_transaction, commit; its
readers must read ``read_committed``. One transactional producer runs one transaction at a time,
so concurrent runs either queue for it (measured here) or each need a producer of their own
(an InitProducerId and a coordinator round trip each). Measured: each run's latency from first
append to durable (committed) end, the time for a reader (read_committed for the transactional
runs) to see a run's last event, and the brokers' CPU per run, at each --concurrency. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.structs import OffsetAndMetadata  # noqa: E402

from bench.flow import cpu_seconds  # noqa: E402
from ledger.kafka.cluster import LocalCluster  # noqa: E402
from ledger.kafka.topics import ensure_topics  # noqa: E402
from ledger.settings import Settings  # noqa: E402

PAYLOAD = b"x" * 300


async def follow(bootstrap: str, topic: str, partitions: int, isolation: str, seen: dict[bytes, float],
                 stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, fetch_max_wait_ms=250,
                                enable_auto_commit=False)
    await consumer.start()
    assigned = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(assigned)
    await consumer.seek_to_beginning(*assigned)
    try:
        while not stop.is_set():
            for messages in (await consumer.getmany(timeout_ms=100)).values():
                for message in messages:
                    seen.setdefault(message.key, time.perf_counter())
    finally:
        await consumer.stop()


async def measure(bootstrap: str, pids: list[int], transactional: bool, runs: int, events: int,
                  concurrency: int) -> dict:
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"txn-{uuid.uuid4().hex[:8]}")
    partitions = (await ensure_topics(settings))[settings.events_topic]
    topic, group = settings.events_topic, f"{settings.topic_prefix}.workers"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                transactional_id=f"{settings.topic_prefix}-worker" if transactional else None)
    await producer.start()
    seen: dict[bytes, float] = {}
    stop = asyncio.Event()
    reader = asyncio.create_task(follow(bootstrap, topic, partitions, "read_committed" if transactional
                                        else "read_uncommitted", seen, stop))
    one_at_a_time = asyncio.Lock()  # a transactional producer has one transaction open at most
    gate = asyncio.Semaphore(concurrency)
    durable: list[float] = []
    ended: dict[bytes, float] = {}

    async def run(number: int) -> None:
        # A task's events share its partition; each event has a key of its own, so that a reader
        # can tell when a run's last event becomes visible.
        partition = number % partitions
        keys = [f"task-{number}/{index}".encode() for index in range(events)]
        async with gate:
            started = time.perf_counter()
            if transactional:
                async with one_at_a_time:
                    async with producer.transaction():
                        for key in keys:
                            await producer.send(topic, PAYLOAD, key=key, partition=partition)
                        await producer.send_offsets_to_transaction(
                            {TopicPartition(topic, partition): OffsetAndMetadata(number, "")}, group)
            else:
                for key in keys:
                    await (await producer.send(topic, PAYLOAD, key=key, partition=partition))
            ended[keys[-1]] = time.perf_counter()
            durable.append(ended[keys[-1]] - started)

    await asyncio.sleep(1)
    cpu0 = [cpu_seconds(pid) for pid in pids]
    await asyncio.gather(*(run(number) for number in range(runs)))
    broker_cpu = sum(cpu_seconds(pid) for pid in pids) - sum(cpu0)
    deadline = time.monotonic() + 30
    while not ended.keys() <= seen.keys() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await reader
    await producer.stop()
    visible = [seen[key] - ended[key] for key in ended if key in seen]
    return {"durable_ms": quantiles(durable), "visible_ms": quantiles(visible), "seen": len(visible),
            "broker_cpu_ms": 1000 * broker_cpu / runs}


def quantiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return 1000 * statistics.median(ordered), 1000 * ordered[int(0.99 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--events", type=int, default=3, help="events a run appends (default %(default)s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-txn-") as folder, LocalCluster(folder, brokers=3) as cluster:
        pids = [cluster.pid(node.node_id) for node in cluster.nodes]
        print(f"Apache Kafka {cluster.version}, 3 brokers; warming up", file=sys.stderr)
        asyncio.run(measure(cluster.bootstrap, pids, False, 2_000, args.events, 16))
        asyncio.run(measure(cluster.bootstrap, pids, True, 300, args.events, 16))
        for concurrency in args.concurrency:
            for transactional in (False, True):
                result = asyncio.run(measure(cluster.bootstrap, pids, transactional, args.runs, args.events,
                                             concurrency))
                rows.append((concurrency, transactional, result))
    print(f"\n| a run of {args.events} events | C | run durable p50 / p99 ms | last event visible to a reader after "
          f"that p50 / p99 ms | brokers' CPU ms per run |\n|---|---|---|---|---|")
    for concurrency, transactional, r in rows:
        what = ("one transaction (events + offsets), read_committed" if transactional
                else "idempotent appends, awaited in turn (ledger)")
        print(f"| {what} | {concurrency} | {r['durable_ms'][0]:.1f} / {r['durable_ms'][1]:.1f} | "
              f"{r['visible_ms'][0]:.1f} / {r['visible_ms'][1]:.1f} | {r['broker_cpu_ms']:.2f} |")


if __name__ == "__main__":
    main()
