"""One principal at every per-principal limit, and what another principal's cycle costs meanwhile.

    python bench/principal_limits.py                      # LEDGER_PRINCIPAL_STREAMS 1000, 30 cycles each
    python bench/principal_limits.py --limit 200 --cycles 10

Starts an embedded broker, ``ledger server`` and ``ledger worker`` on examples/demo.py (processes,
tokens for alice and bob). Bob runs create-answer-complete cycles of approve_expense one after
another (the 2026-07-28 tasks extension: ``tools/call``, ``tasks/get`` every 50 ms until the question,
``tasks/update``, ``tasks/get`` until completed), first with the server otherwise idle, then while
alice, in a process of her own, holds every per-principal limit and tries past it: ``--limit``
listen streams (``subscriptions/listen``), 2025-11-25 sessions and unread ``/ui/api/events`` streams,
``--over`` more of each (refused), and ``tasks/get`` on bob's task ids at ``--probes-per-s`` (refused
access, coalesced in bob's history). Prints what alice got and bob's cycle times in both phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2 as httpx  # noqa: E402

from ledger.kafka.broker import EmbeddedBroker, free_port  # noqa: E402
from ledger.kafka.topics import ensure_topics  # noqa: E402
from ledger.settings import Settings  # noqa: E402
from tests.support.raw_http import ModernClient, RawSession, bearer  # noqa: E402
from tests.support.spawn import spawned  # noqa: E402

TOKENS = {"alice-secret": "alice", "bob-secret": "bob"}
POLL_S = 0.05


async def cycle(bob: ModernClient, amount: int) -> tuple[float, str]:
    """One create-answer-complete cycle; its wall time and task id."""
    started = time.monotonic()
    task_id = (await bob.result("tools/call", {"name": "approve_expense", "arguments": {
        "amount": amount, "description": "bob's"}}))["taskId"]
    while (task := await bob.result("tasks/get", {"taskId": task_id}))["status"] != "input_required":
        await asyncio.sleep(POLL_S)
    await bob.result("tasks/update", {"taskId": task_id, "inputResponses": {
        next(iter(task["inputRequests"])): {"action": "accept", "content": {"approved": True}}}})
    while (task := await bob.result("tasks/get", {"taskId": task_id}))["status"] != "completed":
        await asyncio.sleep(POLL_S)
    return time.monotonic() - started, task_id


async def cycles(url: str, count: int) -> tuple[list[float], list[str]]:
    times, task_ids = [], []
    async with ModernClient(url, token="bob-secret") as bob:
        for amount in range(count):
            took, task_id = await cycle(bob, amount)
            times.append(took)
            task_ids.append(task_id)
    return times, task_ids


async def hold_every_limit(url: str, limit: int, over: int, probes_per_s: float, bobs_tasks: list[str]) -> None:
    """Alice's side (run in a process of its own): hold ``limit`` + ``over`` of each kind of stream,
    print what was accepted as one JSON line, then probe bob's tasks until stopped."""
    counts: dict[str, dict[str, int]] = {}
    async with AsyncExitStack() as held:
        unlimited = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        alice = await held.enter_async_context(ModernClient(url, token="alice-secret", limits=unlimited))
        http = await held.enter_async_context(httpx.AsyncClient(timeout=60, limits=unlimited,
                                                                headers=bearer("alice-secret")))
        own = (await alice.result("tools/call", {"name": "approve_expense", "arguments": {
            "amount": 1, "description": "alice's"}}))["taskId"]

        async def listen() -> bool:
            stream = alice.stream("subscriptions/listen", {"notifications": {"taskIds": [own]}})
            first = await anext(stream)
            if first.get("method") == "notifications/subscriptions/acknowledged":
                held.push_async_callback(stream.aclose)
                return True
            await stream.aclose()
            return False

        async def session() -> bool:
            try:
                await held.enter_async_context(RawSession(url, token="alice-secret"))
                return True
            except KeyError:  # no Mcp-Session-Id: refused
                return False

        async def web_events() -> bool:
            response = await http.send(http.build_request("GET", url.replace("/mcp", "/ui/api/events")), stream=True)
            if response.status_code == 200:
                held.push_async_callback(response.aclose)  # never read: the server's buffer for it fills
                return True
            await response.aclose()
            return False

        for kind, open_one in (("listen streams", listen), ("2025-11-25 sessions", session),
                               ("/ui event streams", web_events)):
            accepted = 0
            for batch in range(0, limit + over, 50):
                opened = await asyncio.gather(*(open_one() for _ in range(min(50, limit + over - batch))))
                accepted += sum(opened)
            counts[kind] = {"tried": limit + over, "accepted": accepted}
        print(json.dumps(counts), flush=True)
        probes = refused = 0
        try:
            while True:
                reply = await alice.call("tasks/get", {"taskId": bobs_tasks[probes % len(bobs_tasks)]})
                probes += 1
                refused += "error" in reply
                await asyncio.sleep(1 / probes_per_s)
        finally:
            print(json.dumps({"probes": probes, "refused": refused}), flush=True)


def summary(times: list[float]) -> tuple[str, str, str]:
    """Median, p90 and max of ``times``, in ms."""
    ordered = sorted(times)
    return tuple(f"{value * 1000:.0f} ms" for value in (statistics.median(ordered), ordered[int(len(ordered) * 0.9)],
                                                         ordered[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=1_000, help="LEDGER_PRINCIPAL_STREAMS (default 1000)")
    parser.add_argument("--over", type=int, default=20, help="streams of each kind alice tries past the limit")
    parser.add_argument("--cycles", type=int, default=30, help="bob's cycles in each phase")
    parser.add_argument("--probes-per-s", type=float, default=50.0, help="alice's tasks/get on bob's tasks")
    parser.add_argument("--hold", nargs=2, metavar=("URL", "TASK_IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        try:
            asyncio.run(hold_every_limit(args.hold[0], args.limit, args.over, args.probes_per_s,
                                         args.hold[1].split(",")))
        except KeyboardInterrupt:  # the bench is done with alice
            pass
        return
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as folder, \
            EmbeddedBroker(port=free_port(), output=subprocess.DEVNULL) as broker:
        tokens = Path(folder) / "tokens"
        tokens.write_text("".join(f"{token} {who}\n" for token, who in TOKENS.items()))
        settings = Settings.from_env(bootstrap=broker.bootstrap, topic_prefix=f"limits-{uuid.uuid4().hex[:8]}",
                                     tokens_file=str(tokens), principal_streams=args.limit)
        asyncio.run(ensure_topics(settings))
        port = free_port()
        url = f"http://127.0.0.1:{port}/mcp"
        with spawned(["worker", "examples/demo.py"], settings, "ledger worker"), \
                spawned(["server", "examples/demo.py", "--port", str(port)], settings, "serving"):
            asyncio.run(cycles(url, 5))  # warm-up
            alone, bobs_tasks = asyncio.run(cycles(url, args.cycles))
            print("bob alone: median {}, p90 {}, max {}".format(*summary(alone)), flush=True)
            alice = subprocess.Popen([sys.executable, __file__, "--limit", str(args.limit), "--over", str(args.over),
                                      "--probes-per-s", str(args.probes_per_s), "--hold", url, ",".join(bobs_tasks)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
            try:
                held = json.loads(alice.stdout.readline() or "{}")
                if not held:
                    raise SystemExit("alice's process ended before it held her streams")
                loaded, _ = asyncio.run(cycles(url, args.cycles))
            finally:
                alice.send_signal(signal.SIGINT)
                probed = [json.loads(line) for line in alice.stdout if line.startswith("{")]
                alice.wait(30)
    print(f"\nLEDGER_PRINCIPAL_STREAMS={args.limit}; alice, in a process of her own:")
    for kind, count in held.items():
        print(f"  {kind}: {count['tried']:,} tried, {count['accepted']:,} accepted")
    if probed:
        print(f"  tasks/get on bob's tasks: {probed[-1]['probes']:,} sent, {probed[-1]['refused']:,} refused")
    print(f"\n| bob's create-answer-complete cycle ({args.cycles} each) | median | p90 | max |\n|---|---|---|---|")
    for phase, times in (("alone", alone), ("alice at every limit", loaded)):
        print(f"| {phase} | {' | '.join(summary(times))} |")
    print(f"\nloaded median / alone median: {statistics.median(loaded) / statistics.median(alone):.2f}x")


if __name__ == "__main__":
    main()
