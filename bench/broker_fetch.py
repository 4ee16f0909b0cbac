"""What one fetch costs the embedded broker as a partition fills with small batches; prints a markdown table.

    python bench/broker_fetch.py [--batches 1000 4000 16000]

Starts the embedded broker, writes single-record batches (one send, one ack: what a server's
append of one event is) to a one-partition topic, and at each size times 100 fetches of the
partition's last record: the broker's CPU (from /proc) and the wall time per fetch. Every
consumer that tails the topic (server, worker) pays this per fetch; a fetch for several
partitions pays it for each. This is why bench/park.py cannot reach 100,000 parked tasks on the
embedded broker (README, "Benchmarks").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from ledger.kafka.broker import EmbeddedBroker, free_port  # noqa: E402

FETCHES = 100
TOPIC = "bench-broker-fetch"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(sizes: list[int]) -> list[tuple[int, float, float]]:
    rows = []
    with EmbeddedBroker(port=free_port()) as broker:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, 1, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=500)
        await producer.start()
        await consumer.start()
        try:
            partition = TopicPartition(TOPIC, 0)
            consumer.assign([partition])
            written = 0
            for size in sorted(sizes):
                while written < size:
                    await (await producer.send(TOPIC, b"x" * 300))
                    written += 1
                cpu_before, started = cpu_seconds(broker.pid), time.perf_counter()
                for _ in range(FETCHES):
                    consumer.seek(partition, written - 1)
                    if not (await consumer.getmany(partition, timeout_ms=5_000, max_records=1)).get(partition):
                        raise SystemExit(f"no record came back at {written} batches")
                rows.append((written, (cpu_seconds(broker.pid) - cpu_before) * 1000 / FETCHES,
                             (time.perf_counter() - started) * 1000 / FETCHES))
                print(f"  {written:,} batches measured", file=sys.stderr, flush=True)
        finally:
            await consumer.stop()
            await producer.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1_000, 4_000, 16_000],
                        help="partition sizes (single-record batches) to measure at")
    args = parser.parse_args()
    print("| batches in the partition | broker CPU per fetch of the last record | wall per fetch |\n|---:|---:|---:|")
    for batches, cpu_ms, wall_ms in asyncio.run(measure(args.batches)):
        print(f"| {batches:,} | {cpu_ms:.2f} ms | {wall_ms:.2f} ms |")


if __name__ == "__main__":
    main()
