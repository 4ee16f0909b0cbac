"""The timer service: N tasks waiting on a time (half asleep in ``ctx.sleep``, half on a question with a
deadline) on one worker; its memory with all of them pending, and how late they fire at a given rate.

    source .venv/bin/activate
    python bench/timers.py                       # 100,000 timers firing at 1,000/s, embedded broker
    python bench/timers.py --broker kafka        # the same on 3 Apache Kafka brokers
    python bench/timers.py --timers 10000        # quick check

The histories of the N waiting tasks (created, started, then ``TimerSet`` or ``ElicitationRequested``
with ``timeout_ms``, exactly what ``bench/timer_app.py``'s tool records) are written to the log in large
batches, with their due times spread evenly from ``--lead`` seconds after the seeding starts, at ``--rate``
per second. One ``ledger worker`` then starts on the log as after a restart: its RSS is read once it has
read every partition (every timer pending), and against an empty worker's. Each timer's time comes while
it runs: it writes ``TimerFired`` or ``ElicitationExpired``, and the woken tool then completes (a
``TaskStarted`` and a ``TaskCompleted`` more). Lateness is read back from the log: the written event's
time minus the due time, per timer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
import uuid

from flow import ROOT, SetupFailed, fresh_broker, say
from park import rss_mb
from timer_app import QUESTION, SCHEMA

from ledger.contract.elicitation import requested_schema, schema_json
from ledger.contract.events import (
    ElicitationExpired,
    ElicitationRequested,
    PartitionClaimed,
    TaskCompleted,
    TaskCreated,
    TaskEvent,
    TaskStarted,
    TimerFired,
    TimerSet,
    derived_id,
    now_ms,
)
from ledger.kafka.appender import EventLog
from ledger.kafka.reader import LogReader
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.spawn import spawned

APP = str(ROOT / "bench" / "timer_app.py")
SEED_CHUNK = 6_000
SEEDER = "worker:bench-seeder"


def history(index: int, due: int, at: int) -> list[TaskEvent]:
    """One waiting task as the worker that ran it would have written it: every other one asleep, the others
    on a question whose deadline is ``due``."""
    task_id = str(uuid.uuid4())
    kind = "sleep" if index % 2 == 0 else "deadline"
    envelope = {"task_id": task_id, "actor": SEEDER, "occurred_at": at}
    events: list[TaskEvent] = [
        TaskCreated(**{**envelope, "actor": "server:bench"}, tool="wait_then_finish",
                    arguments_json=json.dumps({"kind": kind}, separators=(",", ":"))),
        TaskStarted(**envelope, event_id=derived_id(task_id, SEEDER, "started", 1), attempt=1),
    ]
    if kind == "sleep":
        events.append(TimerSet(**envelope, event_id=derived_id(task_id, SEEDER, "timer", 0), sequence=0,
                               duration_ms=due - at))
    else:
        events.append(ElicitationRequested(
            **envelope, event_id=derived_id(task_id, SEEDER, "asked", 0),
            elicitation_id=derived_id(task_id, SEEDER, "question", 0), sequence=0, message=QUESTION,
            requested_schema_json=schema_json(requested_schema(SCHEMA)), timeout_ms=due - at))
    return events


async def seed(settings: Settings, partitions: int, timers: int, rate: float, lead_s: float) -> tuple[int, int]:
    """Write the waiting tasks, as the worker that claimed every partition last; the first and last due times
    (Unix ms)."""
    at = now_ms()
    first_due = at + int(lead_s * 1000)
    events = [event for index in range(timers)
              for event in history(index, first_due + int(index * 1000 / rate), at)]
    async with EventLog(settings) as log:
        for partition in range(partitions):  # the empty worker's claims came first: its writes would be fenced
            claim = PartitionClaimed.of(partition, SEEDER)
            await log.append(claim, claim.partition)
        for start in range(0, len(events), SEED_CHUNK):
            await log.append_many(events[start:start + SEED_CHUNK])
    if now_ms() > first_due:
        raise SetupFailed(f"seeding took {(now_ms() - at) / 1000:.0f} s, past the first due time: raise --lead")
    return first_due, first_due + int((timers - 1) * 1000 / rate)


async def lateness(settings: Settings) -> dict:
    """Per timer, from the log: when it was written minus when it was due."""
    due: dict[str, int] = {}
    late: list[int] = []
    completed = 0
    fired_at: list[int] = []
    async with LogReader(settings) as reader:
        async for batch in reader.catch_up():
            for record in batch:
                event = record.event
                if isinstance(event, TimerSet):
                    due[event.task_id] = event.due
                elif isinstance(event, ElicitationRequested):
                    due[event.task_id] = event.deadline  # type: ignore[assignment]
                elif isinstance(event, TimerFired | ElicitationExpired):
                    late.append(event.occurred_at - due[event.task_id])
                    fired_at.append(event.occurred_at)
                elif isinstance(event, TaskCompleted):
                    completed += 1
    late.sort()
    quantiles = statistics.quantiles(late, n=100, method="inclusive") if len(late) > 1 else late * 99
    span_s = (max(fired_at) - min(fired_at)) / 1000 if fired_at else 0
    return {"fired": len(late), "completed": completed, "early": sum(value < 0 for value in late),
            "late_ms": {"p50": quantiles[49], "p99": quantiles[98], "max": late[-1] if late else None},
            "fired_per_s": round(len(late) / span_s, 1) if span_s else None, "firing_span_s": span_s}


def run(kind: str, timers: int, rate: float, lead_s: float) -> dict:
    result: dict = {"broker": kind, "timers": timers, "rate_per_s": rate}
    with fresh_broker(kind) as (bootstrap, _brokers):
        settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"timers-{uuid.uuid4().hex[:8]}")
        partitions = asyncio.run(ensure_topics(settings))[settings.events_topic]
        with spawned(["worker", APP], settings, "owns partitions", stop=signal.SIGTERM) as empty:
            time.sleep(2)
            result["worker_rss_mb_empty"] = round(rss_mb(empty.pid), 1)
        say(f"seeding {timers:,} waiting tasks")
        began = time.monotonic()
        first_due, last_due = asyncio.run(seed(settings, partitions, timers, rate, lead_s))
        result["seed_s"] = round(time.monotonic() - began, 1)
        started = time.monotonic()
        with spawned(["worker", APP], settings, "owns partitions") as worker:
            while not any("partitions read to its claims" in line for line in list(worker.output)):
                if worker.poll() is not None:
                    raise SetupFailed(f"the worker exited with code {worker.returncode}")
                time.sleep(0.1)
            result["worker_caught_up_s"] = round(time.monotonic() - started, 1)
            if now_ms() >= first_due:
                raise SetupFailed(f"seeding ({result['seed_s']} s) and the worker's start "
                                  f"({result['worker_caught_up_s']} s) took past the first due time: raise --lead")
            result["worker_rss_mb_pending"] = round(rss_mb(worker.pid), 1)
            say(f"worker read {timers:,} pending timers in {result['worker_caught_up_s']} s, RSS "
                f"{result['worker_rss_mb_pending']} MB (empty {result['worker_rss_mb_empty']} MB); firing for "
                f"{(last_due - first_due) / 1000:.0f} s")
            time.sleep(max(0.0, (last_due - now_ms()) / 1000) + 5)
            result["worker_rss_mb_fired"] = round(rss_mb(worker.pid), 1)
        result.update(asyncio.run(lateness(settings)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1_000.0, help="due times per second (default: %(default)s)")
    parser.add_argument("--lead", type=float, default=180.0,
                        help="seconds from the start of seeding to the first due time, for the seeding and for the "
                             "worker to start and read the log (default: %(default)s)")
    args = parser.parse_args()
    try:
        result = run(args.broker, args.timers, args.rate, args.lead)
    except SetupFailed as exc:
        print(f"bench/timers.py: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
