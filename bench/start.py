"""How long a fresh server and a fresh worker take to be ready on a long history, and their memory.

    python bench/start.py                                   # 500,000 and 1,000,000 events, embedded broker
    python bench/start.py --events 5000000 --open 10000     # the size the start-time goal is set for
    python bench/start.py --broker kafka
    python bench/start.py --database                        # servers on the shared store (PostgreSQL)

For each size: a fresh broker, a log seeded with approve_expense tasks (five events for a finished
one: created, started, asked, answered, completed; three for an open one, still waiting for its
answer; ``--open`` of them, the first task of the log among them, so the oldest open task's first
event is the log's first; alice's, the server taking her token), then ``ledger server
examples/demo.py`` started on it with no local state, timed from launch to ``/readyz`` 200, its RSS
then and its peak; a ``tasks/get`` and a
``task_history`` of the log's first finished task through it; then ``ledger worker`` timed from
launch to "all partitions read to its claims", with its RSS; then ``ledger replay`` of the same log
into a new store, the rate a role's catch-up is held to. One row per size.

``--database``: a PostgreSQL cluster of its own (Debian's package, fsync on) holds the shared
projection store; ``ledger replay --database`` builds it from the seeded log (the replay timed), and
the server starts with ``LEDGER_DATABASE_URL`` pointing at it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2 as httpx  # noqa: E402

from bench.flow import fresh_broker, peak_rss_mb  # noqa: E402
from bench.log import approve_expense_flow  # noqa: E402
from ledger.kafka.appender import EventLog  # noqa: E402
from ledger.kafka.broker import free_port  # noqa: E402
from ledger.kafka.topics import ensure_topics  # noqa: E402
from ledger.settings import Settings  # noqa: E402
from tests.support.postgres import postgres  # noqa: E402
from tests.support.raw_http import ModernClient  # noqa: E402
from tests.support.spawn import LEDGER, drain, role_environment  # noqa: E402

SEED_BATCH = 20_000
READY_TIMEOUT_S = 3_600
READY_POLL_S = 0.02  # a start is about a second: the poll must not be what is measured
TOKEN = "alice-secret"  # the seeded tasks are alice's


async def seed(settings: Settings, events: int, open_tasks: int) -> int:
    """Append about ``events`` events; the number of tasks written."""
    tasks = (events - 3 * open_tasks) // 5 + open_tasks
    every = max(1, tasks // open_tasks)
    started, pending, written = time.monotonic(), [], 0
    async with EventLog(settings, client_id="bench-seed") as log:
        for index in range(tasks):
            events_of_task = approve_expense_flow(f"seed-{index:08d}")
            pending += events_of_task if index % every else events_of_task[:3]  # open: asked, not answered
            if len(pending) >= SEED_BATCH:
                await log.append_many(pending)
                written += len(pending)
                pending = []
                print(f"\rseeding: {written:,} events ({written / (time.monotonic() - started):,.0f}/s)", end="",
                      file=sys.stderr, flush=True)
        if pending:
            await log.append_many(pending)
            written += len(pending)
    print(f"\rseeded {written:,} events ({tasks:,} tasks) in {time.monotonic() - started:.0f} s" + " " * 20,
          file=sys.stderr)
    return tasks


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


def start_server(settings: Settings, port: int) -> tuple[subprocess.Popen[str], float]:
    started = time.monotonic()
    server = subprocess.Popen(LEDGER + ["server", "examples/demo.py", "--port", str(port)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=role_environment(settings))
    server.output = drain(server)
    while time.monotonic() - started < READY_TIMEOUT_S:
        if server.poll() is not None:
            raise SystemExit("the server stopped:\n" + "".join(server.output))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return server, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(READY_POLL_S)
    raise SystemExit("the server was not ready in time")


def start_worker(settings: Settings) -> tuple[subprocess.Popen[str], float]:
    started = time.monotonic()
    worker = subprocess.Popen(LEDGER + ["worker", "examples/demo.py"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=role_environment(settings))
    for line in worker.stdout:
        if "partitions read to its claims" in line:
            return worker, time.monotonic() - started
    raise SystemExit("the worker stopped before it was ready")


async def read_first(url: str) -> tuple[str, int]:
    """The status of the log's first finished task and how many history entries the read tool returns."""
    async with ModernClient(url, token=TOKEN) as client:
        task = await client.result("tasks/get", {"taskId": "seed-00000001"})
        history = await client.result("tools/call", {"name": "task_history",
                                                      "arguments": {"task_id": "seed-00000001"}})
    return task["status"], len(history["structuredContent"]["history"])


def measure(broker: str, events: int, open_tasks: int, database: bool) -> dict[str, object]:
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-start-"))
        bootstrap, _ = stack.enter_context(fresh_broker(broker))
        tokens = Path(folder) / "tokens"
        tokens.write_text(f"{TOKEN} alice\n")
        settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"start-{uuid.uuid4().hex[:8]}",
                                     tokens_file=str(tokens))
        asyncio.run(ensure_topics(settings))
        tasks = asyncio.run(seed(settings, events, open_tasks))
        if database:
            settings = replace(settings, database_url=stack.enter_context(postgres()))
            replay_s = timed_replay(settings, "--database")
        else:
            replay_s = timed_replay(settings, "--store", f"{folder}/replayed.db")
        server, server_s = start_server(settings, port := free_port())
        try:
            server_rss, server_peak = rss_mb(server.pid), peak_rss_mb(server.pid)
            status, entries = asyncio.run(read_first(f"http://127.0.0.1:{port}/mcp"))
        finally:
            server.terminate()
            server.wait(60)
        worker, worker_s = start_worker(settings)
        try:
            worker_rss, worker_peak = rss_mb(worker.pid), peak_rss_mb(worker.pid)
        finally:
            worker.terminate()
            worker.wait(60)
    return {"events": events, "tasks": tasks, "open": open_tasks, "server_s": server_s, "server_rss": server_rss,
            "server_peak": server_peak, "first_task": f"{status}, {entries} entries", "worker_s": worker_s,
            "worker_rss": worker_rss, "worker_peak": worker_peak, "replay_s": replay_s}


def timed_replay(settings: Settings, *into: str) -> float:
    started = time.monotonic()
    subprocess.run(LEDGER + ["replay", *into], cwd=ROOT, check=True, capture_output=True,
                   env=role_environment(settings))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default="500000,1000000", help="log sizes, comma-separated")
    parser.add_argument("--open", type=int, default=10_000, help="tasks left waiting for an answer")
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--database", action="store_true",
                        help="serve from the shared projection store in PostgreSQL, built by `ledger replay --database`")
    args = parser.parse_args()
    rows = [measure(args.broker, int(size), args.open, args.database) for size in args.events.split(",")]
    where = "the shared store (PostgreSQL)" if args.database else "no local state"
    print(f"\n{args.broker} broker; a fresh server and worker, {where}\n")
    print("| events | tasks (open) | server ready | server RSS (peak) | first task through it | worker ready | "
          "worker RSS (peak) | `ledger replay` |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['events']:,} | {row['tasks']:,} ({row['open']:,}) | {row['server_s']:.1f} s | "
              f"{row['server_rss']:.0f} MB ({row['server_peak']:.0f}) | {row['first_task']} | "
              f"{row['worker_s']:.1f} s | {row['worker_rss']:.0f} MB ({row['worker_peak']:.0f}) | "
              f"{row['replay_s']:.1f} s |")


if __name__ == "__main__":
    main()
