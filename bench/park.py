"""Park many approve_expense tasks in input_required, restart server and worker, answer them all.

    source .venv/bin/activate                 # the venv ledger is installed in
    python bench/park.py --tasks 2000         # quick check: ~2 min
    python bench/park.py                      # 15,000 tasks: ~25 min, the embedded broker slows as its partitions fill
    python bench/park.py --seeded 100000      # 100,000 parked tasks written to the log: ~10 min

The embedded broker's fetch costs CPU in proportion to the batches a partition holds
(bench/broker_fetch.py), and parking through MCP writes every event as its own batch, so past
~15,000 tasks the broker, not ledger, sets the pace. ``--seeded N`` measures N parked tasks
without that: the histories of N parked tasks (created, started, asked: a copy of one task parked
through MCP, with fresh ids and amounts) are written to the log in large batches, a server and a
worker start on it as after a restart, their RSS is read once both have read it all, and
``--answer-sample`` of the tasks are answered through MCP and checked as below.

One fresh stack (the embedded broker, ``ledger server`` and ``ledger worker`` on examples/demo.py
as separate processes, the server with a projection store on disk), driven by the peer's own
load generator (``loadgen.run_park`` and ``loadgen.run_answer`` through bench/flow_load.py):

1. idle CPU of each process once the stack has been quiet for ``--quiet`` seconds;
2. park: create the tasks and poll each until input_required, never answering;
3. RSS of server, worker and broker with every task parked (VmRSS; the peak too);
4. restart: SIGTERM server and worker, start both again on the same broker and store, and time
   until the worker owns its partitions and the server's /readyz says it caught up;
5. answer every parked task (loadgen checks that it was still input_required, answers through
   ``tasks/update``, polls until completed and checks the result) and report the drain rate;
6. check, from the restarted server's projection store (its fold of every event), that each parked
   task asked once and completed exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

from flow import LOADER, PEER_DIR, ROOT, SetupFailed, cpu_seconds, fresh_broker, peak_rss_mb, peer_python, say

from ledger.contract.codec import Codec
from ledger.contract.events import ElicitationRequested, TaskCreated, TaskEvent, TaskStarted
from ledger.kafka.appender import EventLog
from ledger.kafka.broker import free_port
from ledger.kafka.reader import LogReader
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from projections.history import describe
from tests.support.spawn import LEDGER, drain, role_environment, spawned, wait_for_line

SEED_CHUNK = 6_000  # events per append_many while seeding
BROKERS = {"embedded": "the embedded broker", "kafka": "Apache Kafka, 3 brokers (broker figures summed)"}

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SetupFailed(f"no VmRSS for pid {pid}")


def by_role(values: dict[str, float]) -> dict[str, float]:
    """Per role (server, worker, broker): the Kafka cluster's brokers (kafka-N) summed into ``broker``."""
    roles: dict[str, float] = {}
    for name, value in values.items():
        role = "broker" if name.startswith("kafka-") else name
        roles[role] = round(roles.get(role, 0) + value, 2)
    return roles


def memory(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    return {"rss_mb": by_role({name: rss_mb(pid) for name, pid in pids.items()}),
            "peak_mb": by_role({name: peak_rss_mb(pid) for name, pid in pids.items()})}


def cpu_since(pids: dict[str, int], before: dict[str, float]) -> dict[str, float]:
    return by_role({name: cpu_seconds(pid) - before[name] for name, pid in pids.items()})


def idle_cpu_percent(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: round(100 * value / seconds, 2) for name, value in cpu_since(pids, before).items()}


def load(python: Path, url: str, args: list[str]) -> dict:
    cmd = [str(python), str(LOADER), "--path", "tasks", "--expect", "ledger", "--url", url, "--max-s", "7200",
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PEER_DIR": str(PEER_DIR)})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupFailed(f"load generator failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def until_ready(port: int, process: subprocess.Popen[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SetupFailed(f"the restarted server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SetupFailed(f"the restarted server was not ready within {timeout:.0f} s")


def stop_gracefully(process: subprocess.Popen[str], what: str) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        raise SetupFailed(f"{what} did not stop within 60 s of SIGTERM") from None


def run(kind: str, tasks: int, concurrency: int, quiet_s: float) -> dict:
    python = peer_python()
    result: dict = {"broker": kind, "tasks": tasks, "concurrency": concurrency}
    with tempfile.TemporaryDirectory(prefix="ledger-park-") as scratch, fresh_broker(kind) as (bootstrap, brokers):
        settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"park-{uuid.uuid4().hex[:8]}",
                                     store=str(Path(scratch) / "projections.db"))
        asyncio.run(ensure_topics(settings))
        ids = str(Path(scratch) / "parked.json")
        port = free_port()
        demo = str(ROOT / "examples" / "demo.py")
        worker_args, server_args = ["worker", demo], ["server", demo, "--port", str(port)]

        with spawned(worker_args, settings, "ledger worker") as worker, \
                spawned(server_args, settings, "serving") as server:
            pids = {"server": server.pid, "worker": worker.pid, **brokers}
            url = f"http://127.0.0.1:{port}/mcp"
            say(f"stack up; {quiet_s:.0f} s quiet, then idle CPU over 10 s")
            time.sleep(quiet_s)
            result["idle_cpu_percent"] = idle_cpu_percent(pids, 10)
            result["memory_empty"] = memory(pids)
            say(f"idle CPU % of a core: {result['idle_cpu_percent']}; parking {tasks:,} tasks at C={concurrency}")
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            result["park"] = load(python, url, ["--park", ids, "-n", str(tasks), "-c", str(concurrency)])
            result["park_cpu_s"] = cpu_since(pids, cpu0)
            time.sleep(settings.hot_window_ms / 1000 + 2)  # let the worker park what it kept hot
            result["memory_parked"] = memory(pids)
            say(f"parked {result['park']['created_and_parked']:,} in {result['park']['wall_s']:.0f} s; "
                f"memory {result['memory_parked']}; restarting server and worker")
            stop_gracefully(server, "the server")
            stop_gracefully(worker, "the worker")

        started = time.monotonic()
        with spawned(worker_args, settings, "owns partitions") as worker, \
                spawned(server_args, settings, "serving") as server:
            result["worker_owns_partitions_after_restart_s"] = round(time.monotonic() - started, 2)
            until_ready(port, server)
            result["server_ready_after_restart_s"] = round(time.monotonic() - started, 2)
            pids = {"server": server.pid, "worker": worker.pid, **brokers}
            result["memory_restarted"] = memory(pids)
            say(f"server ready {result['server_ready_after_restart_s']} s after the restart; answering all")
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            result["answer"] = load(python, url, ["--answer", ids, "-n", str(tasks), "-c", str(concurrency)])
            result["answer_cpu_s"] = cpu_since(pids, cpu0)
            result["memory_drained"] = memory(pids)
            stop_gracefully(server, "the server")  # writes its last projection batch
            stop_gracefully(worker, "the worker")

        # The restarted server's projection store is the fold of every event it read (its checkpoint
        # says how many); reading the topic back again from the embedded broker can stall once it
        # holds tens of thousands of small batches.
        parked = [p["taskId"] for p in json.loads(Path(ids).read_text())]
        result["log"] = fold_check(Path(settings.store), parked)
    return result


def run_seeded(kind: str, tasks: int, sample: int, concurrency: int) -> dict:
    python = peer_python()
    result: dict = {"broker": kind, "tasks": tasks, "concurrency": concurrency, "seeded": True}
    with tempfile.TemporaryDirectory(prefix="ledger-park-") as scratch, fresh_broker(kind) as (bootstrap, brokers):
        settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"park-{uuid.uuid4().hex[:8]}",
                                     store=str(Path(scratch) / "projections.db"))
        asyncio.run(ensure_topics(settings))
        template_file, ids = Path(scratch) / "template.json", Path(scratch) / "parked.json"
        port = free_port()
        demo = str(ROOT / "examples" / "demo.py")
        worker_args, server_args = ["worker", demo], ["server", demo, "--port", str(port)]
        url = f"http://127.0.0.1:{port}/mcp"
        with spawned(worker_args, settings, "ledger worker") as worker, \
                spawned(server_args, settings, "serving") as server:
            result["memory_empty"] = memory({"server": server.pid, "worker": worker.pid, **brokers})
            load(python, url, ["--park", str(template_file), "-n", "1", "-c", "1"])
            stop_gracefully(server, "the server")
            stop_gracefully(worker, "the worker")
        say(f"one task parked through MCP as the template; writing {tasks:,} parked tasks to the log")
        template = json.loads(template_file.read_text())[0]
        started = time.monotonic()
        parked = asyncio.run(seed(settings, template, tasks))
        result["seed_s"] = round(time.monotonic() - started, 1)
        Path(ids).write_text(json.dumps(parked[:sample]))
        say(f"wrote {3 * tasks:,} events in {result['seed_s']} s; starting server and worker on them")

        started = time.monotonic()
        # The worker is started by hand: its log says when it has read all its partitions to its claims.
        worker = subprocess.Popen(LEDGER + worker_args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=role_environment(settings))
        try:
            with spawned(server_args, settings, "serving") as server:
                until_ready(port, server)
                try:
                    wait_for_line(worker, " partitions read to its claims ", timeout=900)
                except AssertionError as exc:
                    raise SetupFailed(f"the worker did not read its partitions back: {exc}"[:500]) from None
                drain(worker)
                result["both_caught_up_s"] = round(time.monotonic() - started, 2)
                pids = {"server": server.pid, "worker": worker.pid, **brokers}
                time.sleep(5)
                result["memory_parked"] = memory(pids)
                say(f"server ready and worker through its partitions {result['both_caught_up_s']} s after the start; "
                    f"memory {result['memory_parked']}; "
                    f"answering {sample:,} of the {tasks:,}")
                cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                result["answer"] = load(python, url, ["--answer", str(ids), "-n", str(sample), "-c", str(concurrency)])
                result["answer_cpu_s"] = cpu_since(pids, cpu0)
                result["memory_drained"] = memory(pids)
                stop_gracefully(server, "the server")
                stop_gracefully(worker, "the worker")
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait(30)
        result["log"] = fold_check(Path(settings.store), [p["taskId"] for p in parked[:sample]])
        result["log"]["parked_still_input_required"] = still_waiting(Path(settings.store), parked[sample:])
    return result


async def seed(settings: Settings, template: dict, tasks: int) -> list[dict]:
    """Write ``tasks`` copies of the template task's history (fresh ids, amounts and descriptions)."""
    async with LogReader(settings) as reader:
        history = [record.event async for batch in reader.catch_up() for record in batch
                   if record.event.task_id == template["taskId"]]
    created, started_, asked = (next(e for e in history if isinstance(e, kind))
                                for kind in (TaskCreated, TaskStarted, ElicitationRequested))
    arguments = json.loads(created.arguments_json)
    if asked.message != demo_question(arguments["amount"], arguments["description"]):
        raise SetupFailed(f"examples/demo.py asks {asked.message!r}; bench/park.py's demo_question no longer matches")
    if template["key"] != asked.elicitation_id:
        raise SetupFailed(f"inputRequests is no longer keyed by elicitation id ({template['key']!r})")
    parked: list[dict] = []
    events: list[TaskEvent] = []
    async with EventLog(settings) as log:
        for i in range(tasks):
            amount, description = float(100 + i % 900) + 0.5, f"parked {i}"
            task_id, elicitation_id = str(uuid.uuid4()), str(uuid.uuid4())
            arguments_json = json.dumps({**arguments, "amount": amount, "description": description})
            events += [
                created.model_copy(update={"event_id": str(uuid.uuid4()), "task_id": task_id,
                                           "arguments_json": arguments_json}),
                started_.model_copy(update={"event_id": str(uuid.uuid4()), "task_id": task_id}),
                asked.model_copy(update={"event_id": str(uuid.uuid4()), "task_id": task_id,
                                         "elicitation_id": elicitation_id,
                                         "message": demo_question(amount, description)}),
            ]
            parked.append({"taskId": task_id, "key": elicitation_id, "amount": amount})
            if len(events) >= SEED_CHUNK or i == tasks - 1:
                await log.append_many(events)
                events = []
            if (i + 1) % 20_000 == 0:
                say(f"  {i + 1:,} tasks written")
    return parked


def demo_question(amount: float, description: str) -> str:
    """What examples/demo.py's approve_expense asks (a copy must ask it word for word, or its replay fails)."""
    return f"Approve expense of {amount} for {description!r}?"


def still_waiting(store: Path, parked: list[dict]) -> int:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        waiting = {task_id for (task_id,) in db.execute("SELECT task_id FROM tasks WHERE status = 'input_required'")}
    finally:
        db.close()
    return sum(1 for p in parked if p["taskId"] in waiting)


def fold_check(store: Path, parked: list[str]) -> dict:
    """How often the log says each parked task asked and completed, from the server's projection store."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    codec, asked, completed = Codec(), Counter[str](), Counter[str]()
    try:
        for task_id in parked:  # the store keeps each event as written; a fenced one counts for nothing
            for (record,) in db.execute("SELECT record FROM history WHERE task_id = ? AND fenced_by IS NULL",
                                        (task_id,)):
                kind = describe(codec.decode(record))[0]
                asked[task_id] += kind == "asked"
                completed[task_id] += kind == "completed"
        events = db.execute("SELECT sum(next_offset) FROM checkpoint").fetchone()[0]
    finally:
        db.close()
    return {
        "events": events,
        "parked_completed_once": sum(1 for task_id in parked if completed[task_id] == 1),
        "parked_completed_more_than_once": sum(1 for task_id in parked if completed[task_id] > 1),
        "parked_not_completed": sum(1 for task_id in parked if completed[task_id] == 0),
        "parked_asked_more_than_once": sum(1 for task_id in parked if asked[task_id] > 1),
    }


def memory_row(stage: str, memory: dict) -> str:
    roles = ("server", "worker", "broker")
    return (f"| RSS MB {stage} (server / worker / broker; peak) | "
            + " / ".join(f"{memory['rss_mb'][n]:.0f}" for n in roles) + " ; "
            + " / ".join(f"{memory['peak_mb'][n]:.0f}" for n in roles) + " |")


def report(r: dict) -> str:
    park, answer, log = r["park"], r["answer"], r["log"]
    server_worker = r["memory_parked"]["rss_mb"]["server"] + r["memory_parked"]["rss_mb"]["worker"]
    lines = [
        f"| measure | {r['tasks']:,} tasks, C={r['concurrency']}, {BROKERS[r['broker']]} |", "|---|---|",
        f"| idle CPU % of a core (server / worker / broker) | "
        f"{' / '.join(str(r['idle_cpu_percent'][n]) for n in ('server', 'worker', 'broker'))} |",
        f"| parked (input_required, unanswered) | {park['created_and_parked']:,} in {park['wall_s']:.0f} s "
        f"({park['created_and_parked'] / park['wall_s']:.0f}/s), {park['errors']} errors |",
    ]
    lines += [memory_row(stage, r[f"memory_{stage}"]) for stage in ("empty", "parked", "restarted", "drained")]
    lines += [
        f"| server + worker RSS with all parked | {server_worker:.0f} MB |",
        f"| after the restart: worker owns its partitions / server ready | "
        f"{r['worker_owns_partitions_after_restart_s']} s / {r['server_ready_after_restart_s']} s |",
        f"| answered: still input_required / update ok / completed approved | {answer['still_input_required']:,} / "
        f"{answer['update_ok']:,} / {answer['completed_approved']:,} (not found {answer['not_found']}, "
        f"other errors {answer['other_error']}) |",
        f"| drain | {answer['drain_wall_s']:.0f} s, {answer['drain_tps']} tasks/s |",
        f"| log: exactly one TaskCompleted / more / none | {log['parked_completed_once']:,} / "
        f"{log['parked_completed_more_than_once']} / {log['parked_not_completed']} ({log['events']:,} events); "
        f"asked more than once: {log['parked_asked_more_than_once']} |",
        "| CPU s park (server / worker / broker) | "
        + " / ".join(str(r["park_cpu_s"][n]) for n in ("server", "worker", "broker")) + " |",
        "| CPU s drain (server / worker / broker) | "
        + " / ".join(str(r["answer_cpu_s"][n]) for n in ("server", "worker", "broker")) + " |",
    ]
    return "\n".join(lines)


def report_seeded(r: dict) -> str:
    answer, log, parked = r["answer"], r["log"], r["memory_parked"]
    lines = [
        f"| measure | {r['tasks']:,} tasks written to the log as parked; {answer['tasks']:,} answered, "
        f"C={r['concurrency']}, {BROKERS[r['broker']]} |",
        "|---|---|",
        f"| seeding (3 events a task, large batches) | {r['seed_s']} s |",
        f"| server ready (/readyz) and worker through its partitions, after the start | {r['both_caught_up_s']} s |",
    ]
    lines += [memory_row(stage, r[f"memory_{stage}"]) for stage in ("empty", "parked", "drained")]
    lines += [
        f"| server + worker RSS with all parked | {parked['rss_mb']['server'] + parked['rss_mb']['worker']:.0f} MB |",
        f"| answered: still input_required / update ok / completed approved | {answer['still_input_required']:,} / "
        f"{answer['update_ok']:,} / {answer['completed_approved']:,} (not found {answer['not_found']}, "
        f"other errors {answer['other_error']}) |",
        f"| drain of the sample | {answer['drain_wall_s']:.0f} s, {answer['drain_tps']} tasks/s |",
        f"| answered: exactly one TaskCompleted / more / none; asked more than once | "
        f"{log['parked_completed_once']:,} / {log['parked_completed_more_than_once']} / {log['parked_not_completed']}; "
        f"{log['parked_asked_more_than_once']} |",
        f"| not answered: still input_required | {log['parked_still_input_required']:,} of "
        f"{r['tasks'] - answer['tasks']:,} |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=15_000, help="tasks to park through MCP (default 15000)")
    ap.add_argument("--concurrency", type=int, default=64, help="load generator concurrency (default 64)")
    ap.add_argument("--quiet", type=float, default=30, help="seconds of quiet before idle CPU is measured "
                    "(default 30: long enough for fetch waits to reach LEDGER_IDLE_FETCH_WAIT_MS)")
    ap.add_argument("--seeded", type=int, metavar="N",
                    help="write N parked tasks to the log instead of parking them through MCP (see above)")
    ap.add_argument("--answer-sample", type=int, default=2_000,
                    help="with --seeded: how many of the tasks to answer through MCP (default 2000)")
    ap.add_argument("--broker", choices=sorted(BROKERS), default="embedded",
                    help="embedded (default) or kafka: a fresh 3-broker Apache Kafka cluster of local JVMs")
    ap.add_argument("--json", help="also write the raw result here")
    args = ap.parse_args()
    if args.tasks < 1 or args.concurrency < 1 or (args.seeded is not None and not 1 <= args.answer_sample <= args.seeded):
        ap.error("--tasks, --seeded and --concurrency must be at least 1, and --answer-sample from 1 to --seeded")
    try:
        if args.seeded is not None:
            result = run_seeded(args.broker, args.seeded, args.answer_sample, args.concurrency)
        else:
            result = run(args.broker, args.tasks, args.concurrency, args.quiet)
    except SetupFailed as exc:
        sys.exit(f"park: {exc}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print()
    print(report_seeded(result) if args.seeded is not None else report(result))


if __name__ == "__main__":
    main()
