"""Park many approve_expense tasks in input_required, restart server and worker, answer them all.

    source /work/venv/bin/activate
    python bench/park.py                      # 100,000 tasks at concurrency 64: ~25 min on 2 cores
    python bench/park.py --tasks 2000         # quick check: ~1 min

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

from flow import LOADER, PEER_DIR, ROOT, SetupFailed, cpu_seconds, peak_rss_mb, peer_python, say

from ledger.broker import EmbeddedBroker, free_port
from ledger.settings import Settings
from ledger.topics import ensure_topics
from tests.spawn import spawned

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SetupFailed(f"no VmRSS for pid {pid}")


def memory(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    return {name: {"rss_mb": round(rss_mb(pid), 1), "peak_mb": round(peak_rss_mb(pid), 1)}
            for name, pid in pids.items()}


def idle_cpu_percent(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: round(100 * (cpu_seconds(pid) - before[name]) / seconds, 2) for name, pid in pids.items()}


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


def run(tasks: int, concurrency: int, quiet_s: float) -> dict:
    python = peer_python()
    result: dict = {"tasks": tasks, "concurrency": concurrency}
    with tempfile.TemporaryDirectory(prefix="ledger-park-") as scratch, \
            EmbeddedBroker(port=free_port(), output=subprocess.DEVNULL) as broker:
        settings = Settings.from_env(bootstrap=broker.bootstrap, topic_prefix=f"park-{uuid.uuid4().hex[:8]}",
                                     store=str(Path(scratch) / "projections.db"))
        asyncio.run(ensure_topics(settings))
        ids = str(Path(scratch) / "parked.json")
        port = free_port()
        demo = str(ROOT / "examples" / "demo.py")
        worker_args, server_args = ["worker", demo], ["server", demo, "--port", str(port)]

        with spawned(worker_args, settings, "ledger worker") as worker, \
                spawned(server_args, settings, "serving") as server:
            pids = {"server": server.pid, "worker": worker.pid, "broker": broker.pid}
            url = f"http://127.0.0.1:{port}/mcp"
            say(f"stack up; {quiet_s:.0f} s quiet, then idle CPU over 10 s")
            time.sleep(quiet_s)
            result["idle_cpu_percent"] = idle_cpu_percent(pids, 10)
            result["memory_empty"] = memory(pids)
            say(f"idle CPU % of a core: {result['idle_cpu_percent']}; parking {tasks:,} tasks at C={concurrency}")
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            result["park"] = load(python, url, ["--park", ids, "-n", str(tasks), "-c", str(concurrency)])
            result["park_cpu_s"] = {name: round(cpu_seconds(pid) - cpu0[name], 1) for name, pid in pids.items()}
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
            pids = {"server": server.pid, "worker": worker.pid, "broker": broker.pid}
            result["memory_restarted"] = memory(pids)
            say(f"server ready {result['server_ready_after_restart_s']} s after the restart; answering all")
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            result["answer"] = load(python, url, ["--answer", ids, "-n", str(tasks), "-c", str(concurrency)])
            result["answer_cpu_s"] = {name: round(cpu_seconds(pid) - cpu0[name], 1) for name, pid in pids.items()}
            result["memory_drained"] = memory(pids)
            stop_gracefully(server, "the server")  # writes its last projection batch
            stop_gracefully(worker, "the worker")

        # The restarted server's projection store is the fold of every event it read (its checkpoint
        # says how many); reading the topic back again from the embedded broker can stall once it
        # holds tens of thousands of small batches.
        parked = [p["taskId"] for p in json.loads(Path(ids).read_text())]
        result["log"] = fold_check(Path(settings.store), parked)
    return result


def fold_check(store: Path, parked: list[str]) -> dict:
    """How often the log says each parked task asked and completed, from the server's projection store."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        def per_task(kind: str) -> Counter:
            return Counter(dict(db.execute("SELECT task_id, count(*) FROM history WHERE kind = ? GROUP BY task_id",
                                           (kind,))))
        asked, completed = per_task("asked"), per_task("completed")
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


def report(r: dict) -> str:
    park, answer, log = r["park"], r["answer"], r["log"]
    server_worker = r["memory_parked"]["server"]["rss_mb"] + r["memory_parked"]["worker"]["rss_mb"]
    lines = [
        f"| measure | {r['tasks']:,} tasks, C={r['concurrency']} |", "|---|---|",
        f"| idle CPU % of a core (server / worker / broker) | "
        f"{' / '.join(str(r['idle_cpu_percent'][n]) for n in ('server', 'worker', 'broker'))} |",
        f"| parked (input_required, unanswered) | {park['created_and_parked']:,} in {park['wall_s']:.0f} s "
        f"({park['created_and_parked'] / park['wall_s']:.0f}/s), {park['errors']} errors |",
    ]
    for stage in ("empty", "parked", "restarted", "drained"):
        m = r[f"memory_{stage}"]
        lines.append(f"| RSS MB {stage} (server / worker / broker; peak) | "
                     + " / ".join(f"{m[n]['rss_mb']:.0f}" for n in ("server", "worker", "broker"))
                     + " ; " + " / ".join(f"{m[n]['peak_mb']:.0f}" for n in ("server", "worker", "broker")) + " |")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000, help="tasks to park (default 100000)")
    ap.add_argument("--concurrency", type=int, default=64, help="load generator concurrency (default 64)")
    ap.add_argument("--quiet", type=float, default=30, help="seconds of quiet before idle CPU is measured "
                    "(default 30: long enough for fetch waits to reach LEDGER_IDLE_FETCH_WAIT_MS)")
    ap.add_argument("--json", help="also write the raw result here")
    args = ap.parse_args()
    if args.tasks < 1 or args.concurrency < 1:
        ap.error("--tasks and --concurrency must be at least 1")
    try:
        result = run(args.tasks, args.concurrency, args.quiet)
    except SetupFailed as exc:
        sys.exit(f"park: {exc}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print()
    print(report(result))


if __name__ == "__main__":
    main()
