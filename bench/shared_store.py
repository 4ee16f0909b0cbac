"""A shared projection store in PostgreSQL, measured with ledger's table shapes: the prototype behind
the start-time design (docs/architecture.md, "Starting bounded by what is open").

    python bench/shared_store.py                         # 1,000,000 tasks, 10,000 open
    python bench/shared_store.py --tasks 100000 --open 1000

Starts a throwaway PostgreSQL cluster (Debian's package; as the ``postgres`` user when run as root),
loads --tasks task rows (--open of them open, the first task among them) and 5 history entries per task
(records of 220 bytes, as ledger's Avro events are) the way a projector catching up would (COPY,
50,000 rows a transaction with the checkpoint), then measures: a projector following the log
(100-event transactions: row upserts, history inserts, checkpoint), a fresh server's start (the
checkpoint and the open rows), point reads (a row, a task's history), and a worker's journal restore
(the history records of one partition's open tasks).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.postgres import postgres  # noqa: E402

PARTITIONS = 8
EVENTS_PER_TASK = 5
RECORD = os.urandom(220)

SCHEMA = """
DROP TABLE IF EXISTS tasks, history, checkpoint;
CREATE TABLE tasks (task_id TEXT PRIMARY KEY, partition INT NOT NULL, principal TEXT, tool TEXT NOT NULL,
    status TEXT NOT NULL, created_at BIGINT NOT NULL, last_updated_at BIGINT NOT NULL, row_json TEXT NOT NULL);
CREATE TABLE history (position BIGINT PRIMARY KEY, task_id TEXT NOT NULL, ignored_because TEXT, record BYTEA NOT NULL);
CREATE TABLE checkpoint (partition INT PRIMARY KEY, next_offset BIGINT NOT NULL);
"""
INDEXES = """
CREATE INDEX tasks_open ON tasks (partition) WHERE status IN ('working', 'input_required');
CREATE INDEX tasks_by_created ON tasks (created_at, task_id);
CREATE INDEX history_by_task ON history (task_id);
"""


def row_json(i: int, status: str) -> str:
    return ('{"task_id": "t-%d", "tool": "approve_expense", "status": "%s", "principal": "alice", '
            '"arguments_json": "{\\"amount\\": 42, \\"description\\": \\"taxi\\"}", "ttl_ms": null, '
            '"result_json": "{\\"content\\": []}", "pending": []}' % (i, status))


def measure(dsn: str, tasks: int, open_tasks: int) -> None:
    with psycopg.connect(dsn) as projector:
        offsets = catch_up(projector, tasks, open_tasks)
        follow(projector, offsets, first_task=tasks)
    with psycopg.connect(dsn) as fresh:
        start_a_server(fresh)
        point_reads(fresh, tasks)
        restore_a_partition(fresh)


def catch_up(conn: psycopg.Connection, tasks: int, open_tasks: int) -> list[int]:
    """Load the history as a projector catching up would; the next offset of each partition."""
    conn.execute(SCHEMA)
    conn.commit()
    open_ids = set(random.sample(range(tasks), open_tasks)) | {0}  # the oldest task is open too
    offsets = [0] * PARTITIONS
    started = time.perf_counter()
    per_transaction = 50_000 // EVENTS_PER_TASK
    for first in range(0, tasks, per_transaction):
        chunk = range(first, min(tasks, first + per_transaction))
        with conn.cursor() as cur:
            with cur.copy("COPY tasks FROM STDIN") as copy:
                for i in chunk:
                    status = "input_required" if i in open_ids else "completed"
                    copy.write_row((f"t-{i}", i % PARTITIONS, "alice", "approve_expense", status, i, i,
                                    row_json(i, status)))
            with cur.copy("COPY history FROM STDIN") as copy:
                for entry in entries(chunk, offsets):
                    copy.write_row(entry)
            cur.executemany("INSERT INTO checkpoint VALUES (%s, %s) ON CONFLICT (partition) DO UPDATE SET "
                            "next_offset = excluded.next_offset", list(enumerate(offsets)))
        conn.commit()
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    conn.execute(INDEXES)
    conn.commit()
    conn.autocommit = True
    conn.execute("ANALYZE")  # what autovacuum does soon after a bulk load
    conn.autocommit = False
    indexed = time.perf_counter() - started
    events = tasks * EVENTS_PER_TASK
    size = conn.execute("SELECT pg_size_pretty(pg_database_size('postgres'))").fetchone()[0]
    print(f"catch-up load: {tasks:,} rows + {events:,} history entries in {loaded:.1f} s "
          f"({events / loaded:,.0f} events/s), indexes {indexed:.1f} s; database {size}")
    return offsets


def entries(chunk: range, offsets: list[int]) -> Iterator[tuple[int, str, None, bytes]]:
    """The history entries of the tasks in ``chunk``, at the next offsets of their partitions."""
    for i in chunk:
        partition = i % PARTITIONS
        for _ in range(EVENTS_PER_TASK):
            yield (partition << 40) | offsets[partition], f"t-{i}", None, RECORD
            offsets[partition] += 1


def follow(conn: psycopg.Connection, offsets: list[int], first_task: int, transactions: int = 200) -> None:
    """A projector following the log: 100 events a transaction (20 tasks created and finished)."""
    latencies = []
    started = time.perf_counter()
    for n in range(transactions):
        chunk = range(first_task + 20 * n, first_task + 20 * (n + 1))
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO tasks VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (task_id) DO UPDATE SET "
                            "status = excluded.status, last_updated_at = excluded.last_updated_at, "
                            "row_json = excluded.row_json",
                            [(f"t-{i}", i % PARTITIONS, "alice", "approve_expense", "completed", i, i,
                              row_json(i, "completed")) for i in chunk])
            cur.executemany("INSERT INTO history VALUES (%s,%s,%s,%s)", list(entries(chunk, offsets)))
            cur.executemany("UPDATE checkpoint SET next_offset = %s WHERE partition = %s",
                            [(offset, partition) for partition, offset in enumerate(offsets)])
        conn.commit()
        latencies.append(time.perf_counter() - t0)
    took = time.perf_counter() - started
    latencies.sort()
    print(f"live projector: 100-event transactions p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * .99)] * 1000:.1f} ms; "
          f"{transactions * 100 / took:,.0f} events/s one at a time")


def start_a_server(conn: psycopg.Connection) -> None:
    """What a fresh server reads before it serves: the checkpoint, and the open rows."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    checkpoint = dict(conn.execute("SELECT partition, next_offset FROM checkpoint").fetchall())
    open_rows = conn.execute("SELECT task_id, row_json FROM tasks WHERE status IN ('working', 'input_required')"
                             ).fetchall()
    took = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"fresh server: checkpoint of {len(checkpoint)} partitions and {len(open_rows):,} open rows in "
          f"{took * 1000:.0f} ms (+{(rss_after - rss_before) / 1024:.0f} MB peak RSS)")


def point_reads(conn: psycopg.Connection, tasks: int) -> None:
    """A row and a task's history, for 1,000 tasks from anywhere in the history, the first among them."""
    row_s, history_s = [], []
    for i in [0] + random.sample(range(tasks), 999):
        t0 = time.perf_counter()
        conn.execute("SELECT row_json FROM tasks WHERE task_id = %s", (f"t-{i}",)).fetchone()
        row_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        conn.execute("SELECT position, record FROM history WHERE task_id = %s ORDER BY position",
                     (f"t-{i}",)).fetchall()
        history_s.append(time.perf_counter() - t0)
    for name, times in (("row", row_s), ("history", history_s)):
        times.sort()
        print(f"point read, {name}: p50 {statistics.median(times) * 1e3:.2f} ms, p99 {times[989] * 1e3:.2f} ms")


def restore_a_partition(conn: psycopg.Connection) -> None:
    """What a worker given partition 0 reads: the journal records of its open tasks."""
    started = time.perf_counter()
    records = conn.execute("SELECT h.task_id, h.position, h.record FROM tasks t JOIN history h "
                           "ON h.task_id = t.task_id WHERE t.partition = 0 AND t.status IN ('working', "
                           "'input_required') ORDER BY h.position").fetchall()
    print(f"worker restore of partition 0: {len(records):,} journal records of its open tasks in "
          f"{(time.perf_counter() - started) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--open", type=int, default=10_000)
    args = parser.parse_args()
    with postgres() as url:
        measure(url, args.tasks, args.open)


if __name__ == "__main__":
    main()
