"""Replay throughput: write N task events, then time ``ledger replay`` end to end; prints a markdown table.

    python bench/replay.py [--events 1000000] [--processes 1 2] [--stages] [--broker embedded|kafka]

Without --bootstrap (or LEDGER_BOOTSTRAP) it starts a fresh broker: the embedded one, or with
``--broker kafka`` a 3-broker Apache Kafka cluster of local JVMs. The events are
approve_expense flows (five events a task). A live view (what a server runs) follows the topic
into its own store while the events are written; then ``ledger replay`` runs as its own process,
as a user runs it, into a fresh store (once per --processes value), and each store must hold the
same rows and history as the live one.
Target (issue 8): >= 150,000 events/s end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from bench.flow import fresh_broker  # noqa: E402
from bench.log import approve_expense_flow  # noqa: E402
from ledger.contract.codec import Codec  # noqa: E402
from ledger.kafka.appender import EventLog  # noqa: E402
from ledger.kafka.records import decode_records  # noqa: E402
from ledger.kafka.security import connection  # noqa: E402
from ledger.kafka.topics import ensure_topics  # noqa: E402
from ledger.service.live_view import LiveView  # noqa: E402
from ledger.service.replay import no_collections  # noqa: E402
from ledger.settings import Settings  # noqa: E402
from projections.projector import Projector  # noqa: E402
from projections.store import ProjectionStore  # noqa: E402

CHUNK = 5_000


async def write_followed(settings: Settings, events: int, live_store: Path) -> float:
    """Write the events while a live view follows them into ``live_store``; returns the writing seconds."""
    await ensure_topics(settings)
    store = ProjectionStore(live_store)
    view = LiveView(settings, store)
    await view.start()
    try:
        seconds = await write(settings, events)
        while sum(store.checkpoint().values()) < events:
            await asyncio.sleep(0.2)
    finally:
        await view.stop()
        store.close()
    return seconds


def differences(replayed: Path, live: Path) -> tuple[int, int]:
    """Rows and history entries that are in one store and not the other."""
    db = sqlite3.connect(replayed)
    db.execute("ATTACH DATABASE ? AS live", (str(live),))
    counts = []
    for table in ("tasks", "history"):
        counts.append(sum(db.execute(query).fetchone()[0] for query in (
            f"SELECT count(*) FROM (SELECT * FROM main.{table} EXCEPT SELECT * FROM live.{table})",
            f"SELECT count(*) FROM (SELECT * FROM live.{table} EXCEPT SELECT * FROM main.{table})"))
        )
    db.close()
    return counts[0], counts[1]


async def write(settings: Settings, events: int) -> float:
    """Append ``events`` events (whole flows); returns the seconds it took."""
    await ensure_topics(settings)
    started = time.perf_counter()
    async with EventLog(settings) as log:
        in_flight: set[asyncio.Task] = set()
        for first in range(0, events // 5, CHUNK // 5):
            flows = [e for t in range(first, min(first + CHUNK // 5, events // 5))
                     for e in approve_expense_flow(f"task-{t:07d}")]
            in_flight.add(asyncio.create_task(log.append_many(flows)))
            if len(in_flight) >= 8:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            if first % 100_000 == 0:
                print(f"  wrote {first * 5:,} events", file=sys.stderr, flush=True)
        await asyncio.gather(*in_flight)
    return time.perf_counter() - started


def replay(settings: Settings, store: Path, processes: int) -> tuple[float, str]:
    """Run ``ledger replay``; returns wall seconds and its summary line."""
    environment = {**os.environ, "LEDGER_BOOTSTRAP": settings.bootstrap, "LEDGER_TOPIC_PREFIX": settings.topic_prefix}
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, "-m", "ledger.cli.main", "replay", "--store", str(store),
                               "--processes", str(processes)],
                              capture_output=True, text=True, env=environment, check=True)
    return time.perf_counter() - started, finished.stdout.splitlines()[0]


async def stage_rate(settings: Settings, partitions: int, events: int, stage: str) -> float:
    """events/s of the first stages of a replay alone, in this process: ``read`` (aiokafka only),
    ``decode`` (+ Avro into events), ``fold`` (+ status rows and history entries, no store)."""
    consumer = AIOKafkaConsumer(**connection(settings), enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    try:
        assigned = [TopicPartition(settings.events_topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        codec, projector = Codec(), Projector()
        seen = 0
        started = time.perf_counter()
        with no_collections():  # as ledger replay runs
            while seen < events:
                for tp, messages in (await consumer.getmany(timeout_ms=100, max_records=20_000)).items():
                    seen += len(messages)
                    if stage == "read":
                        continue
                    decoded, _ = decode_records(codec, tp.topic, tp.partition, messages)
                    if stage == "fold":
                        for record in decoded:
                            projector.apply(record)
                        projector.written(projector.take())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", default=os.environ.get("LEDGER_BOOTSTRAP"),
                        help="a broker that is already running (default: start a fresh one, see --broker)")
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded",
                        help="the fresh broker to start: embedded (default) or kafka (3 brokers)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, len(os.sched_getaffinity(0))],
                        help="run ledger replay with each of these --processes (default: 1 and the usable CPUs)")
    parser.add_argument("--stages", action="store_true",
                        help="also time the first stages alone (read, + decode, + fold) to show what bounds replay")
    args = parser.parse_args()
    events = args.events - args.events % 5
    runs: list[tuple[int, float, str, tuple[int, int, int, int, int]]] = []
    with (nullcontext((args.bootstrap, {})) if args.bootstrap else fresh_broker(args.broker)) as (bootstrap, _):
        settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"bench-replay-{uuid.uuid4().hex[:8]}")
        with tempfile.TemporaryDirectory() as scratch:
            live = Path(scratch) / "live.sqlite"
            print(f"writing {events:,} events to {settings.events_topic} on {bootstrap}, followed live",
                  file=sys.stderr)
            write_s = asyncio.run(write_followed(settings, events, live))
            for processes in dict.fromkeys(args.processes):
                print(f"replaying with --processes {processes}", file=sys.stderr)
                path = Path(scratch) / f"replayed-{processes}.sqlite"
                wall_s, summary = replay(settings, path, processes)
                store = ProjectionStore(path)
                counts = (store.count(), store.count(status="completed"), store.history_size(),
                          *differences(path, live))
                store.close()
                runs.append((processes, wall_s, summary, counts))
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
            partitions = asyncio.run(ensure_topics(settings))[settings.events_topic]
            stages = {stage: asyncio.run(stage_rate(settings, partitions, events, stage))
                      for stage in (("read", "decode", "fold") if args.stages else ())}
    print()
    for processes, _, summary, _ in runs:
        print(f"--processes {processes}: {summary}")
    print("\n| measure | value |\n|---|---:|")
    print(f"| events written | {events:,} ({events / write_s:,.0f} events/s, acks=all) |")
    for processes, wall_s, summary, _ in runs:
        own_rate = re.search(r"([\d,]+) events/s", summary).group(1)
        print(f"| `ledger replay --processes {processes}`: wall time (process start to exit) / end to end / "
              f"as it reports it | {wall_s:.1f} s / **{events / wall_s:,.0f} events/s** / {own_rate} events/s |")
    for stage, what in (("read", "aiokafka reading the records, nothing else"), ("decode", "+ Avro decode into events"),
                        ("fold", "+ status and history fold, no store")):
        if stage in stages:
            print(f"| stage alone, in one process: {what} | {stages[stage]:,.0f} events/s |")
    print(f"| largest replay process, peak RSS | {peak_mb:,} MB |")
    failed = False
    for processes, _, _, (tasks, completed, history, row_diff, history_diff) in runs:
        print(f"| --processes {processes}: tasks / completed / history entries; rows / entries that differ from the "
              f"live view's store | {tasks:,} / {completed:,} / {history:,}; {row_diff:,} / {history_diff:,} |")
        failed |= tasks != events // 5 or completed != tasks or history != events or bool(row_diff or history_diff)
    if failed:
        sys.exit("a replayed store does not equal the live one")


if __name__ == "__main__":
    main()
